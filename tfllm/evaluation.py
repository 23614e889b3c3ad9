r"""Scores of a finished run on data it never trained on: a JSON report and PNG plots.

`evaluate_run(run_dir)` reads what `tools/train.py` wrote (`config.json`, `tokenizer/`,
`model.keras`) and scores the model by its task:
- classification: accuracy, precision / recall / F1 (micro, macro, per class) and the
  confusion matrix, next to the majority-class baseline;
- token classification: entity-level precision / recall / F1 as conlleval counts them,
  per entity type, and the confusion matrix of word tags;
- pretraining (causal LM, masked LM, MLM + NSP): perplexity and accuracy (of the
  predicted tokens) on the validation files next to a unigram model's (add-one smoothed
  counts of the training labels; its accuracy: always the most frequent token), NSP accuracy;
- supervised fine-tuning (`causal_lm_sft`): answers generated (greedy) for the single-turn
  prompts of the test files (else validation), scored by `tfllm.text_evaluation` (BLEU,
  chrF, ROUGE, exact match; accuracy / macro F1 for label-like answers, next to always
  giving the most common answer), with
  `report.md` (scores, settings, examples).
It writes `report.json`, and for the labelled tasks `confusion_matrix.png` and
`per_class_f1.png`, to `output_dir` (default `<run_dir>/evaluation/`).

Example:
>>> rows = [("good film", "pos"), ("bad film", "neg"), ("a good one", "pos")]
>>> lines = [json.dumps({"text": text, "label": label}) + "\n" for text, label in rows]
>>> _ = Path("reviews.jsonl").write_text("".join(lines))
>>> # A run folder as tools/train.py writes it (here with an untrained model):
>>> files = ("reviews.jsonl",)
>>> config = RunConfig(task="classification", model="bert_tiny", train_files=files,
...                    validation_files=files, test_files=files, label_names=("neg", "pos"))
>>> config.save("runs/sst/config.json")
>>> vocabulary = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "good", "bad", "film"]
>>> tokenizer = tfllm.tokenizers.WordPieceTokenizer(vocabulary)
>>> _ = tfllm.tokenizers.save_tokenizer(tokenizer, "runs/sst/tokenizer")
>>> backbone = BertBackbone.from_preset("bert_tiny", vocabulary_size=7)
>>> TextClassifier(backbone, num_classes=2).save("runs/sst/model.keras")
>>> report = evaluate_run("runs/sst")
>>> report["examples"], report["baseline"]["accuracy"]  # the majority class's accuracy
(3, 0.666...)
>>> sorted(report["scores"])
['accuracy', 'confusion_matrix', 'macro', 'micro', 'per_class']
>>> sorted(path.name for path in Path("runs/sst/evaluation").iterdir())
['confusion_matrix.png', 'per_class_f1.png', 'report.json']
"""

import collections
import json
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from pipelines import labelled
from pipelines.datasets import expand_files, pretraining_dataset_fn
from pipelines.sft import read_sft_files
from tfllm.config import FINETUNING_TASKS, SFT_TASK, RunConfig
from tfllm.finetuning import baseline, load_data
from tfllm.io import atomic_write
from tfllm.metrics import entity_f1
from tfllm.plots import plot_confusion_matrix, plot_per_class
from tfllm.preprocessing import TokenClassificationPreprocessor
from tfllm.pretraining import build_preprocessor, default_corpus
from tfllm.text_evaluation import evaluate_generation, report_markdown
from tfllm.tokenizers import load_tokenizer


def classification_scores(y_true, y_pred, label_names) -> dict:
    """Accuracy, micro / macro / per-class precision, recall, F1 and the confusion matrix.

    Args:
        y_true, y_pred: int class ids `(N,)`.
        label_names: the name of each class id.

    Returns:
        `{"accuracy", "micro", "macro", "per_class", "confusion_matrix"}`; `micro` and
        `macro` hold `precision`, `recall`, `f1`; `per_class` maps each name to those and
        its `support`; `confusion_matrix[i][j]` counts class `i` predicted as `j`. A class
        never predicted (or never present) has precision (recall) 0, as scikit-learn's
        `zero_division=0`.
    """
    y_true, y_pred = np.asarray(y_true, np.int64), np.asarray(y_pred, np.int64)
    classes = len(label_names)
    if y_true.shape != y_pred.shape or y_true.ndim != 1 or not len(y_true):
        raise ValueError(
            "`y_true` and `y_pred` must be non-empty 1-D arrays of one shape. "
            f"Received: {y_true.shape} and {y_pred.shape}"
        )
    for argument, ids in (("y_true", y_true), ("y_pred", y_pred)):
        if ids.min() < 0 or ids.max() >= classes:
            raise ValueError(
                f"`{argument}` holds ids outside [0, {classes}) (the {classes} `label_names`). "
                f"Received: min {ids.min()}, max {ids.max()}"
            )
    matrix = np.zeros((classes, classes), np.int64)
    np.add.at(matrix, (y_true, y_pred), 1)
    correct, predicted, support = np.diag(matrix), matrix.sum(0), matrix.sum(1)
    precision, recall, f1 = _prf(correct, predicted, support)
    accuracy = float(correct.sum() / len(y_true))
    per_class = {
        name: {
            "precision": float(precision[i]),
            "recall": float(recall[i]),
            "f1": float(f1[i]),
            "support": int(support[i]),
        }
        for i, name in enumerate(label_names)
    }
    return {
        "accuracy": accuracy,
        # One label per example: micro totals of predicted and true are both N.
        "micro": {"precision": accuracy, "recall": accuracy, "f1": accuracy},
        "macro": {
            "precision": float(precision.mean()),
            "recall": float(recall.mean()),
            "f1": float(f1.mean()),
        },
        "per_class": per_class,
        "confusion_matrix": matrix.tolist(),
    }


def _prf(correct, predicted, true):
    def ratio(a, b):
        return np.divide(a, b, out=np.zeros(a.shape), where=b > 0)

    precision, recall = ratio(correct, predicted), ratio(correct, true)
    return precision, recall, ratio(2 * precision * recall, precision + recall)


def evaluate_run(run_dir, split: str = "test", output_dir=None) -> dict:
    """Scores the model of `run_dir`; writes and returns the report (see module docstring).

    Args:
        run_dir: a folder written by `tools/train.py`.
        split: for fine-tuning runs, `"test"` (the validation split when there is no test
            split) or `"validation"`; pretraining runs use their validation files.
        output_dir: where the report and plots go; default `<run_dir>/evaluation`.
    """
    run_dir = Path(run_dir)
    missing = [n for n in ("config.json", "tokenizer", "model.keras") if not (run_dir / n).exists()]
    if missing:
        raise ValueError(f"`run_dir` {str(run_dir)!r} is not a finished run: no {missing}.")
    if split not in ("test", "validation"):
        raise ValueError(f"`split` must be 'test' or 'validation'. Received: {split!r}")
    config = RunConfig.load(run_dir / "config.json")
    kind = None if config.init_from else config.tokenizer  # a checkpoint's own kind
    tokenizer = load_tokenizer(run_dir / "tokenizer", kind=kind)
    model = keras.saving.load_model(run_dir / "model.keras", compile=False)
    output_dir = Path(output_dir) if output_dir else run_dir / "evaluation"
    output_dir.mkdir(parents=True, exist_ok=True)
    report = {"run_dir": str(run_dir), "task": config.task}
    if config.task in FINETUNING_TASKS:
        report.update(_evaluate_labelled(config, tokenizer, model, split, output_dir))
    elif config.task == SFT_TASK:
        report.update(_evaluate_sft(config, model, split))
        atomic_write(output_dir / "report.md", report_markdown(report))
    else:
        report.update(_evaluate_language_model(config, tokenizer, model))
    atomic_write(output_dir / "report.json", json.dumps(report, indent=1))
    return report


def _evaluate_labelled(config, tokenizer, model, split, output_dir) -> dict:
    data = load_data(config)
    name = split if getattr(data, split) else "validation"
    examples = getattr(data, name)
    names = list(data.label_names)
    batch_size, length = config.batch_size, config.sequence_length
    if config.task == "classification":
        preprocessor = model.preprocessor_cls(tokenizer, length)  # BERT's or GPT's
        dataset = labelled.classification_dataset(examples, preprocessor, batch_size)
        predicted = np.concatenate(
            [np.argmax(model.predict_on_batch(x), -1) for x, _ in dataset.as_numpy_iterator()]
        )
        scores = classification_scores([y for _, y in examples], predicted, names)
        per_class = {n: s["f1"] for n, s in scores["per_class"].items()}
        matrix, title = scores["confusion_matrix"], "F1 per class"
    else:
        preprocessor = TokenClassificationPreprocessor(tokenizer, length, names)
        dataset = labelled.token_classification_dataset(examples, preprocessor, batch_size)
        predicted = _word_predictions(model, dataset, [len(w) for w, _ in examples], names)
        true = [[names[t] for t in tags] for _, tags in examples]
        scores = entity_f1(true, [[names[t] for t in tags] for tags in predicted])
        per_class = {n: s["f1"] for n, s in scores["per_type"].items()}
        word_scores = classification_scores(
            [t for _, tags in examples for t in tags], np.concatenate(predicted), names
        )
        matrix, title = word_scores["confusion_matrix"], "entity F1 per type"
        scores["word_tags"] = word_scores
    plot_confusion_matrix(matrix, names, output_dir / "confusion_matrix.png", f"{name} split")
    plot_per_class(per_class, output_dir / "per_class_f1.png", title)
    base = baseline(config.task, labelled.LabelledData(data.train, [], examples, data.label_names))
    return {
        "split": name,
        "examples": len(examples),
        "label_names": names,
        "scores": scores,
        "baseline": {k.removeprefix("baseline_"): v for k, v in base.items()},
    }


def _evaluate_sft(config, model, split) -> dict:
    """Generated answers to the single-turn prompts of the test (or validation) files."""
    files = config.test_files if split == "test" and config.test_files else ()
    name = "test" if files else "validation"
    files = files or config.validation_files
    if not files:
        raise ValueError("An SFT run is evaluated on its `test_files` or `validation_files`.")
    conversations = read_sft_files(expand_files(files, f"{name}_files"))
    pairs = [
        (c[-2]["content"], c[-1]["content"])
        for c in conversations
        if len(c) >= 2 and [m["role"] for m in c[-2:]] == ["user", "assistant"]
        and all(m["role"] == "system" for m in c[:-2])
    ]  # fmt: skip
    if not pairs:
        raise ValueError(f"The {name} files {list(files)} hold no single-turn conversations.")
    prompts, references = map(list, zip(*pairs, strict=True))
    report = evaluate_generation(model, prompts, references, batch_size=config.batch_size)
    report.pop("outputs")
    if "accuracy" in report["scores"]:  # label-like answers: against the constant answer
        most_common = collections.Counter(references).most_common(1)[0][1]
        report["baseline"] = {"majority_accuracy": most_common / len(references)}
    skipped = len(conversations) - len(pairs)
    return {"split": name, "examples_scored": len(pairs), "multi_turn_skipped": skipped, **report}


def _word_predictions(model, dataset, word_counts, names) -> list[np.ndarray]:
    """Tag id per word: the prediction at each word's first piece (`sample_weight > 0`);
    words cut off by `sequence_length` get `O` (they cannot be predicted)."""
    outside = names.index("O") if "O" in names else 0
    rows = []
    for x, _, weights in dataset.as_numpy_iterator():
        ids = np.argmax(model.predict_on_batch(x), -1)
        rows.extend(row[w > 0] for row, w in zip(ids, weights, strict=True))
    predictions = []
    for row, count in zip(rows, word_counts, strict=True):
        predictions.append(np.concatenate([row, np.full(count - len(row), outside)]))
    return predictions


def _evaluate_language_model(config, tokenizer, model) -> dict:
    if config.train_files:
        train = expand_files(config.train_files)
        validation = expand_files(config.validation_files, "validation_files")
    else:
        train, validation = default_corpus()
    context = tf.distribute.InputContext()
    vocabulary = tokenizer.vocabulary_size()

    def batches(files):
        preprocessor = build_preprocessor(config, tokenizer)
        return pretraining_dataset_fn(config, preprocessor, files, training=False)(context)

    counts = np.ones(vocabulary)  # add-one smoothing
    for _, y, weights in batches(train).as_numpy_iterator():
        y, weights = _mlm(y), _mlm(weights)
        counts += np.bincount(y[weights > 0], minlength=vocabulary)
    unigram = np.log(counts / counts.sum())
    most_frequent = int(np.argmax(counts))
    totals = collections.Counter()
    for x, y, weights in batches(validation).as_numpy_iterator():
        outputs = model.predict_on_batch(x)
        logits, labels, mask = _mlm(outputs), _mlm(y), _mlm(weights) > 0
        log_probs = logits - _logsumexp(logits)
        totals["model"] -= np.take_along_axis(log_probs, labels[..., None], -1)[..., 0][mask].sum()
        totals["unigram"] -= unigram[labels[mask]].sum()
        totals["correct"] += (np.argmax(logits, -1) == labels)[mask].sum()
        totals["unigram_correct"] += (labels[mask] == most_frequent).sum()
        totals["tokens"] += mask.sum()
        if isinstance(y, dict):  # next-sentence prediction
            totals["nsp_correct"] += (np.argmax(outputs["nsp"], -1) == y["nsp"]).sum()
            totals["nsp_pairs"] += len(y["nsp"])
    if not totals["tokens"]:
        raise ValueError(f"The validation files {validation} hold no tokens to score.")
    scores = {
        "perplexity": float(np.exp(totals["model"] / totals["tokens"])),
        "accuracy": float(totals["correct"] / totals["tokens"]),
    }
    if totals["nsp_pairs"]:
        scores["nsp_accuracy"] = float(totals["nsp_correct"] / totals["nsp_pairs"])
    return {
        "split": "validation",
        "validation_files": [str(f) for f in validation],
        "tokens": int(totals["tokens"]),
        "scores": scores,
        "baseline": {
            "unigram_perplexity": float(np.exp(totals["unigram"] / totals["tokens"])),
            "unigram_accuracy": float(totals["unigram_correct"] / totals["tokens"]),
        },
    }


def _mlm(value):
    """The masked-LM part of a BERT pretraining structure; anything else unchanged."""
    return value["mlm"] if isinstance(value, dict) else value


def _logsumexp(logits):
    peak = logits.max(-1, keepdims=True)
    return peak + np.log(np.exp(logits - peak).sum(-1, keepdims=True))
