"""The data files of `tools/demo.py`: labelled reviews, People's Daily text, SFT prompts.

`labelled_files` writes a built-in labelled set as train / validation / test JSONL;
`peoples_daily_text` turns the tagged People's Daily corpus into plain articles;
`sft_files` writes the instruction-tuning prompts (a corpus line or a review: which?).

Example:
>>> from pathlib import Path
>>> names = labelled_files("rotten_tomatoes", Path("data/labelled"), validation=64, test=64)
>>> names, len(read_jsonl(Path("data/labelled/test.jsonl")))
(('rotten', 'fresh'), 64)
"""

import json
import random
from pathlib import Path

from pipelines import labelled
from tfllm import assets
from tfllm.io import atomic_write


def write_jsonl(path: Path, records) -> Path:
    """Writes `records` (JSON-able dicts) one per line, atomically; returns `path`."""
    lines = (json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    atomic_write(path, "".join(lines))
    return path


def read_jsonl(path: Path) -> list[dict]:
    """The records of a JSONL file."""
    # Lines end at "\n" only: texts may hold other line separators (U+2028, ...).
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def labelled_files(dataset: str, folder: Path, validation: int, test: int) -> tuple:
    """The built-in labelled `dataset` as train / validation / test JSONL files (the
    validation and test splits cut to their first `validation` / `test` examples, 0: all);
    returns its label names."""
    data = labelled.load_builtin(dataset)
    splits = {"train": data.train, "validation": data.validation[:validation],
              "test": data.test[: test or None]}  # fmt: skip
    for name, examples in splits.items():
        write_jsonl(folder / f"{name}.jsonl", ({"text": x, "label": y} for x, y in examples))
    return data.label_names


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


def sft_files(data: Path, reviews: Path, prompt: str, answers: list, count: int) -> None:
    """`<data>/sft/{train,validation,test}.jsonl`: `{"prompt", "response"}` records asking
    whether a text is a line of the corpus shards (`answers[0]`) or a review
    (`answers[1]`); `count` of each per training split, a quarter of that (at least 8)
    for the others. The test split takes corpus lines from the validation shards."""
    rng = random.Random(0)
    line_answer, review_answer = answers
    for split, corpus, review_split in (("train", "train", "train"), ("validation",
                                        "validation", "validation"),
                                        ("test", "validation", "test")):  # fmt: skip
        lines = [line.strip() for f in sorted(data.glob(f"{corpus}-*.jsonl"))
                 for record in read_jsonl(f)
                 for line in record["text"].splitlines() if len(line.strip()) >= 24]  # fmt: skip
        texts = [r["text"] for r in read_jsonl(reviews / f"{review_split}.jsonl")]
        size = count if split == "train" else max(count // 4, 8)
        pairs = [(t, line_answer) for t in rng.sample(lines, min(size, len(lines)))]
        pairs += [(t, review_answer) for t in rng.sample(texts, min(size, len(texts)))]
        rng.shuffle(pairs)
        records = ({"prompt": prompt.format(text=t), "response": a} for t, a in pairs)
        write_jsonl(data / "sft" / f"{split}.jsonl", records)
