"""Scores of generated text: generate for every prompt, compare with the references.

`evaluate_generation(lm, prompts, references)` runs `CausalLM.generate` in batches (greedy
by default) and scores the answers with corpus BLEU and chrF (sacrebleu's), ROUGE-1/2/L
(Google's rouge-score), exact match, and, when the references look like labels (few
distinct, short), accuracy and macro F1. `write_generation_report` writes `report.json`
and `report.md` (scores, settings, a table of examples).

Example:
>>> tokenizer = tfllm.tokenizers.WordPieceTokenizer(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "a", "b"])
>>> lm = CausalLM(
...     GPTBackbone.from_preset("gpt_tiny", vocabulary_size=6),
...     preprocessor=tfllm.preprocessing.CausalLMPreprocessor(tokenizer, sequence_length=8),
... )
>>> report = evaluate_generation(lm, ["a b", "b a"], ["a", "b"], max_length=6)
>>> sorted(report["scores"])
['accuracy', 'bleu', 'chrf', 'exact_match', 'macro_f1', 'rouge1', 'rouge2', 'rougeL']
>>> len(report["examples"]), sorted(report["examples"][0])
(2, ['output', 'prompt', 'reference'])
"""

import json
from pathlib import Path

from tfllm.io import atomic_write
from tfllm.metrics import (
    classification_scores,
    corpus_bleu,
    corpus_chrf,
    exact_match,
    rouge,
)

# References count as labels when there are at most this many distinct ones ...
MAX_LABELS = 20
# ... and each has at most this many words.
MAX_LABEL_WORDS = 3


def _check_texts(name: str, texts) -> list[str]:
    if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
        raise TypeError(f"`{name}` must be a list of strings. Received: {texts!r:.100}")
    return list(texts)


def looks_like_labels(references: list[str]) -> bool:
    """Few distinct, short references: answers are classes (accuracy and F1 apply)."""
    distinct = set(references)
    return len(distinct) <= MAX_LABELS and all(len(r.split()) <= MAX_LABEL_WORDS for r in distinct)


def evaluate_generation(
    model,
    prompts,
    references,
    max_length: int | None = None,
    sampler="greedy",
    batch_size: int = 16,
    seed: int = 0,
    num_examples: int = 20,
) -> dict:
    """Generates an answer for each prompt and scores the answers against `references`.

    Args:
        model: a `CausalLM` with a preprocessor (its chat template, if any, applies).
        prompts, references: lists of strings, one reference per prompt.
        max_length: prompt + answer tokens (default: the preprocessor's sequence length).
        sampler: for this evaluation (`CausalLM.generate`'s `sampler`); greedy by default.
        batch_size: prompts generated together.
        seed: of sampling samplers.
        num_examples: rows of the examples table kept in the report.

    Returns:
        `{"scores": {...}, "generation": settings, "examples": [{prompt, reference,
        output}], "outputs": all answers}`.
    """
    prompts, references = _check_texts("prompts", prompts), _check_texts("references", references)
    if not prompts:
        raise ValueError("`prompts` must not be empty.")
    if len(prompts) != len(references):
        raise ValueError(
            f"`prompts` and `references` must have one entry each per example. Received: "
            f"{len(prompts)} prompts and {len(references)} references"
        )
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"`batch_size` must be a positive int. Received: {batch_size!r}")
    outputs = []
    for start in range(0, len(prompts), batch_size):
        batch = prompts[start : start + batch_size]
        answers = model.generate(
            batch, max_length=max_length, strip_prompt=True, sampler=sampler, seed=seed
        )
        outputs.extend(answer.strip() for answer in answers)
    scores = {
        "bleu": corpus_bleu(outputs, references),
        "chrf": corpus_chrf(outputs, references),
        **rouge(outputs, references),
        "exact_match": exact_match(outputs, references),
    }
    if looks_like_labels(references):
        scores.update(classification_scores(outputs, references, sorted(set(references))))
    settings = {
        "sampler": sampler if isinstance(sampler, (str, dict)) else sampler.get_config(),
        "max_length": max_length or model.preprocessor.sequence_length,
        "batch_size": batch_size,
        "seed": seed,
        "prompts": len(prompts),
    }
    examples = [
        {"prompt": p, "reference": r, "output": o}
        for p, r, o in list(zip(prompts, references, outputs, strict=True))[:num_examples]
    ]
    return {"scores": scores, "generation": settings, "examples": examples, "outputs": outputs}


def report_markdown(report: dict) -> str:
    """The report as Markdown: scores, generation settings and the examples table."""

    def cell(text: str) -> str:
        return text.replace("|", "\\|").replace("\n", " ")

    lines = ["# Generated-text evaluation", "", "| score | value |", "|---|---|"]
    lines += [f"| {name} | {value:.4f} |" for name, value in report["scores"].items()]
    lines += ["", "Generation: " + json.dumps(report["generation"]), ""]
    lines += ["| prompt | reference | output |", "|---|---|---|"]
    lines += [
        f"| {cell(e['prompt'])} | {cell(e['reference'])} | {cell(e['output'])} |"
        for e in report["examples"]
    ]
    return "\n".join(lines) + "\n"


def write_generation_report(report: dict, output_dir) -> Path:
    """Writes `report.json` and `report.md` into `output_dir`; returns the folder."""
    folder = Path(output_dir)
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write(folder / "report.json", json.dumps(report, indent=1, ensure_ascii=False))
    atomic_write(folder / "report.md", report_markdown(report))
    return folder
