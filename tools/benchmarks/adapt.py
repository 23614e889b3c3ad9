"""Domain adaptation: continued masked-LM pretraining of all-MiniLM-L6-v2 on Rotten Tomatoes.

    python -m tools.benchmark adapt [--mlm-steps 200] [--classifier-steps 300] [--write]

All through the Python API on raw strings. MiniLM ships without a masked-LM head, so
`MaskedLM.from_preset` creates one; three masked-LM models are scored on the validation
split with fixed masks (one seeded preprocessor pass): (a) as loaded (new head), (b) the
head trained alone for `--mlm-steps` (encoder frozen: MiniLM as shipped), (c) everything
trained for `--mlm-steps` (the adapted encoder). Then two sentiment classifiers
(`TextClassifier`, mean pooling) are fine-tuned the same way from MiniLM as shipped and
from the adapted encoder, and scored on the test split.
"""

import argparse
import math
import time

import keras
import numpy as np
import tensorflow as tf

from pipelines import labelled
from tfllm import assets
from tfllm.models import MaskedLM, TextClassifier
from tfllm.preprocessing import MaskedLMPreprocessor
from tools.benchmarks import header, write_section

DESCRIPTION = "Continued MLM pretraining of MiniLM on Rotten Tomatoes, then classifiers."
SECTION = "## Domain adaptation (continued masked-LM pretraining)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--mlm-steps", type=int, default=200, help="masked-LM steps")
    parser.add_argument("--classifier-steps", type=int, default=300, help="fine-tuning steps")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--sequence-length", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)


def masked_perplexity(model: MaskedLM, texts: list[str], args) -> float:
    """exp(mean token cross-entropy) at fixed, seeded masks over `texts`."""
    masker = MaskedLMPreprocessor(
        model.preprocessor.tokenizer, args.sequence_length, seed=args.seed + 1
    )
    total, count = 0.0, 0.0
    for start in range(0, len(texts), args.batch_size):
        x, y, w = masker(tf.constant(texts[start : start + args.batch_size]))
        logits = tf.cast(model(x, training=False), tf.float32)
        loss = tf.nn.sparse_softmax_cross_entropy_with_logits(y, logits) * w
        total, count = total + float(tf.reduce_sum(loss)), count + float(tf.reduce_sum(w))
    return math.exp(total / count)


def train_mlm(texts, args, train_encoder: bool) -> tuple[MaskedLM, float]:
    keras.utils.set_random_seed(args.seed)
    model = MaskedLM.from_preset(
        assets.minilm_path(), sequence_length=args.sequence_length, dropout=0.1
    )
    model.preprocessor = MaskedLMPreprocessor(
        model.preprocessor.tokenizer, args.sequence_length, seed=args.seed
    )
    model.backbone.trainable = train_encoder
    model.compile(optimizer=keras.optimizers.AdamW(1e-4 if train_encoder else 1e-3))
    start = time.perf_counter()
    model.fit(texts, batch_size=args.batch_size, epochs=epochs(args.mlm_steps, texts, args),
              verbose=0)  # fmt: skip
    return model, time.perf_counter() - start


def epochs(steps: int, texts: list, args) -> int:
    """Whole epochs covering at least `steps` batches."""
    return math.ceil(steps / math.ceil(len(texts) / args.batch_size))


def fine_tune(backbone, data, args) -> float:
    keras.utils.set_random_seed(args.seed)
    classifier = TextClassifier.from_preset(
        assets.minilm_path(), num_classes=2, pooling="mean", sequence_length=args.sequence_length
    )
    classifier.backbone.set_weights(backbone.get_weights())
    classifier.compile(optimizer=keras.optimizers.AdamW(5e-5))
    texts, labels = [t for t, _ in data.train], [y for _, y in data.train]
    count = epochs(args.classifier_steps, texts, args)
    classifier.fit(texts, labels, batch_size=args.batch_size, epochs=count, verbose=0)
    test_texts, test_labels = [t for t, _ in data.test], np.array([y for _, y in data.test])
    predictions = classifier.predict(test_texts, batch_size=64, verbose=0).argmax(-1)
    return float((predictions == test_labels).mean())


def run(args, command: str) -> None:
    data = labelled.load_builtin("rotten_tomatoes", seed=args.seed)
    train = [text for text, _ in data.train]
    validation = [text for text, _ in data.validation]
    keras.utils.set_random_seed(args.seed)
    loaded = MaskedLM.from_preset(assets.minilm_path(), sequence_length=args.sequence_length)
    rows = [("as loaded (new head)", masked_perplexity(loaded, validation, args), 0.0)]
    head_only, seconds = train_mlm(train, args, train_encoder=False)
    rows.append(("head trained, encoder frozen", masked_perplexity(head_only, validation, args),
                 seconds))  # fmt: skip
    adapted, seconds = train_mlm(train, args, train_encoder=True)
    rows.append(("head + encoder trained", masked_perplexity(adapted, validation, args), seconds))
    shipped = fine_tune(head_only.backbone, data, args)
    adapted_accuracy = fine_tune(adapted.backbone, data, args)
    majority = max(np.mean([y for _, y in data.test]), 1 - np.mean([y for _, y in data.test]))
    per_epoch = math.ceil(len(train) / args.batch_size)
    mlm_steps = epochs(args.mlm_steps, train, args) * per_epoch
    classifier_steps = epochs(args.classifier_steps, train, args) * per_epoch
    lines = [
        header(command),
        "",
        f"Rotten Tomatoes: {len(train)} training / {len(validation)} validation / "
        f"{len(data.test)} test snippets; sequence length {args.sequence_length}, batch "
        f"{args.batch_size}, {mlm_steps} masked-LM steps, {classifier_steps} fine-tuning "
        f"steps (whole epochs), seed {args.seed}.",
        "",
        "| masked LM (all-MiniLM-L6-v2) | validation MLM perplexity | training s |",
        "|---|---|---|",
        *(f"| {name} | {ppl:.1f} | {s:.0f} |" for name, ppl, s in rows),
        "",
        "| classifier (mean pooling) | test accuracy |",
        "|---|---|",
        f"| majority class | {majority:.3f} |",
        f"| from MiniLM as shipped | {shipped:.3f} |",
        f"| from the adapted encoder | {adapted_accuracy:.3f} |",
    ]
    body = "\n".join(lines)
    print(body)
    if args.write:
        write_section(SECTION, body)
