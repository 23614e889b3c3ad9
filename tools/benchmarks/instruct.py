"""Instruction tuning on real data: a pretrained GPT taught to answer Rotten Tomatoes sentiment.

    python -m tools.benchmark instruct --model RUN [--steps 300] [--test 300] [--rank 8]
        [--write]

The causal LM of `--model` (a `tools/train.py` run) is fine-tuned through the Python API
on `{"prompts": review, "responses": "negative" / "positive"}` (the default chat
template; loss: the mean over response tokens), once fully and once with LoRA, on the
first `steps * batch_size` training snippets, then scored on the first `--test` test
snippets two ways: the greedy generated answer (until the end token, at most 4 tokens)
must be the label word; label-word scoring takes the more likely of the two words after
the generation prompt (a two-way classifier read out of the LM head). The model before
fine-tuning is scored the same way. The same pretrained backbone is also trained as a
`GPTClassifier` (the last real token's state -> `Dense(2)`, a new head), all weights and
LoRA (head trainable), on the same snippets, steps and learning rates; its test accuracy
is the argmax of its logits.
"""

import argparse
import statistics
import time

import keras
import numpy as np

from pipelines.labelled import load_builtin
from tfllm.benchmarking import markdown_table
from tfllm.demonstrations import score_label_words
from tfllm.generation import generate
from tfllm.models import CausalLM, GPTClassifier
from tfllm.models.preset_io import read_preset
from tfllm.preprocessing import CausalLMPreprocessor, ChatTemplate, GPTClassifierPreprocessor
from tfllm.training import AdamW
from tools.benchmarks import header, write_section

DESCRIPTION = (
    "SFT of a pretrained GPT on Rotten Tomatoes, full and LoRA, against the same GPT trained "
    "as a classifier: accuracy."
)
SECTION = "## Instruction tuning on real data"
WORDS = ("negative", "positive")
NEW = 4


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="a tools/train.py causal LM run")
    parser.add_argument("--steps", type=int, default=300, help="fine-tuning steps")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--sequence-length", type=int, default=96)
    parser.add_argument("--test", type=int, default=300, help="test snippets scored")
    parser.add_argument("--rank", type=int, default=8, help="LoRA rank")
    parser.add_argument("--learning-rate", type=float, default=5e-4)
    parser.add_argument("--lora-learning-rate", type=float, default=2e-3)


class StepTimes(keras.callbacks.Callback):
    """Seconds between consecutive training batches' ends."""

    def on_train_begin(self, logs=None):
        self.ends = []

    def on_train_batch_end(self, batch, logs=None):
        self.ends.append(time.perf_counter())


def language_model(args) -> CausalLM:
    """The run's backbone (its weights, read again) with a chat preprocessor."""
    parts = read_preset(args.model)
    preprocessor = CausalLMPreprocessor(
        parts.tokenizer, args.sequence_length, chat_template=ChatTemplate()
    )
    return CausalLM(parts.backbone, preprocessor=preprocessor)


def score(lm: CausalLM, test: list) -> dict:
    """Accuracy of generated answers, share of answers that are a label word, and
    label-word scoring accuracy."""
    texts, labels = [t for t, _ in test], np.array([y for _, y in test])
    # Greedy, at most NEW tokens after each prompt (a label word and the end token).
    x = lm.preprocessor.generate_preprocess(texts, lm.backbone.max_sequence_length - NEW)
    x = {key: value.numpy() for key, value in x.items()}
    new = generate(lm, x, NEW, stop_token_ids=(lm.preprocessor.end_token_id,))
    answers = [reply.strip() for reply in lm.preprocessor.generate_postprocess(new)]
    prompts = [lm.preprocessor.template.generation_prompt(text) for text in texts]
    scored = score_label_words(lm, lm.preprocessor.tokenizer, prompts, WORDS, label_prefix="")
    return {
        "generated": float(np.mean([a == WORDS[y] for a, y in zip(answers, labels, strict=True)])),
        "valid": float(np.mean([a in WORDS for a in answers])),
        "scored": float(np.mean(scored["predictions"] == labels)),
        "examples": answers[:5],
    }


def classifier(args) -> GPTClassifier:
    """The run's backbone (its weights, read again) under a new two-class head."""
    parts = read_preset(args.model)
    preprocessor = GPTClassifierPreprocessor(parts.tokenizer, args.sequence_length)
    return GPTClassifier(parts.backbone, len(WORDS), preprocessor=preprocessor)


def classifier_score(model: GPTClassifier, test: list) -> dict:
    """Accuracy of the classifier's argmax, and its share of `positive` predictions."""
    predicted = np.argmax(model.predict([t for t, _ in test], batch_size=64, verbose=0), axis=1)
    return {
        "classifier": float(np.mean(predicted == [y for _, y in test])),
        "positive": float(np.mean(predicted == 1)),
    }


def fine_tune(args, train: list, rank: int | None, as_classifier: bool = False):
    """`(model, fit summary)`: SFT of the causal LM, or training of the classifier."""
    keras.utils.set_random_seed(0)
    model = classifier(args) if as_classifier else language_model(args)
    if rank is not None:
        model.backbone.enable_lora(rank)
    rate = args.learning_rate if rank is None else args.lora_learning_rate
    model.compile(optimizer=AdamW(rate, weight_decay=0.01))
    times = StepTimes()
    texts = [t for t, _ in train]
    if as_classifier:
        x, y = texts, np.array([label for _, label in train], "int32")
    else:
        x, y = {"prompts": texts, "responses": [WORDS[label] for _, label in train]}, None
    start = time.perf_counter()
    history = model.fit(x, y, batch_size=args.batch_size, epochs=1, callbacks=[times], verbose=0)
    seconds = time.perf_counter() - start
    step_ms = 1000 * statistics.median(np.diff(times.ends))  # the first (tracing) step left out
    trainable = sum(int(np.prod(w.shape)) for w in model.trainable_weights)
    loss = history.history["loss"][0]  # the mean over the one pass
    return model, {"trainable": trainable, "step_ms": step_ms, "seconds": seconds, "loss": loss}


def run(args, command: str) -> None:
    data = load_builtin("rotten_tomatoes")  # the fixed 80 / 10 / 10 split
    train = data.train[: args.steps * args.batch_size]
    test = data.test[: args.test]
    positive = float(np.mean([y for _, y in test]))
    rows, notes = [], []
    before = language_model(args)
    total = sum(int(np.prod(w.shape)) for w in before.trainable_weights)
    results = {"pretrained, not fine-tuned": ({}, score(before, test))}
    for name, rank in (("SFT, all weights", None), (f"SFT, LoRA rank {args.rank}", args.rank)):
        lm, fit = fine_tune(args, train, rank)
        results[name] = (fit, score(lm, test))
    for name, rank in (
        ("classifier, all weights", None),
        (f"classifier, LoRA rank {args.rank} + head", args.rank),
    ):
        model, fit = fine_tune(args, train, rank, as_classifier=True)
        results[name] = (fit, classifier_score(model, test))
    for name, (fit, scores) in results.items():
        trained = ["–"] * 4
        if fit:
            trained = [f"{fit['trainable']:,}", f"{fit['step_ms']:.0f}",
                       f"{fit['seconds']:.0f}", f"{fit['loss']:.3f}"]  # fmt: skip
        cells = [f"{scores[key]:.3f}" if key in scores else "–"
                 for key in ("generated", "valid", "scored", "classifier")]  # fmt: skip
        rows.append([name, *trained, *cells])
        if "examples" in scores:
            notes.append(f"{name}: first answers {scores['examples']}")
        else:
            notes.append(
                f"{name}: predicts `positive` for {scores['positive']:.3f} of the test snippets"
            )
    table = markdown_table(
        ["model", "trainable params", "ms/step", "fit s", "loss (pass mean)", "generated: accuracy",
         "generated: a label word", "label-word scoring: accuracy", "classifier: accuracy"], rows,
    )  # fmt: skip
    body = "\n".join([
        header(command), "",
        f"`{args.model}` ({total:,} parameters), fine-tuned with `fit` on {len(train):,} "
        f"training snippets ({args.steps} steps of {args.batch_size}, T "
        f"{args.sequence_length}, AdamW {args.learning_rate} / LoRA {args.lora_learning_rate},"
        f" one pass); scored on the first {len(test)} test snippets. Majority class: "
        f"{max(positive, 1 - positive):.3f} ({positive:.3f} positive).", "",
        table, "", *notes,
    ])  # fmt: skip
    print(body)
    if args.write:
        write_section(SECTION, body)
