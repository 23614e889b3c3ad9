"""The README's main job runs end to end at a tiny size, then skips what is up to date."""

import json
import re
from pathlib import Path

import pytest

from tools import demo, demo_report, demo_stages

STAGES = [
    "data", "tokenizer", "gpt", "bert", "classifier", "demos", "sft", "tune", "evaluate", "export",
    "serve",
]  # fmt: skip


def test_results_put_each_score_next_to_its_baseline():
    summaries = {
        "evaluate": {
            "gpt": {"scores": {"perplexity": 80.0}, "baseline": {"unigram_perplexity": 200.0}},
            "bert": {"scores": {"accuracy": 0.05}, "baseline": {"unigram_accuracy": 0.07}},
        },
        "demos": {"k": 8, "label_agreement": {"random": 0.5, "bm25": 0.6, "knn": 0.7}},
        "tune": {"objective": "val_accuracy", "best_value": 0.8, "untuned_value": 0.5},
    }
    rows = {r["model"]: r for r in demo_report.results(summaries)}
    assert list(rows) == ["GPT (pretrained)", "BERT (pretrained)", "demos: knn",
                          "tuned classifier"]  # fmt: skip
    gpt, bert, demos, tuned = rows.values()
    assert (gpt["margin"], gpt["beats"]) == (-120.0, True)  # perplexity: lower is better
    assert bert["margin"] == pytest.approx(-0.02) and not bert["beats"]
    assert demos["margin"] == pytest.approx(0.2) and demos["beats"]
    assert demos["baseline_name"] == "random demonstrations"
    assert tuned["margin"] == pytest.approx(0.3) and tuned["beats"]
    seconds = dict.fromkeys(summaries, 1.5)
    cpu = {**dict.fromkeys(summaries, 2.0), "tune": None}  # a stamp from before CPU was kept
    table = demo_report.summary_table(summaries, seconds, cpu, Path("runs/demo"))
    assert "total             4.5      4.0" in table and "NO" in table
    assert "unigram model" in table and "random demonstrations" in table


@pytest.mark.slow
@pytest.mark.assets
def test_demo_runs_every_stage_then_skips_them(tmp_path, capfd):
    summaries = demo.main(["--size", "tiny", "--out", str(tmp_path)])
    out, err = capfd.readouterr()
    # Not a terminal: plain lines, no progress-bar frames or colour codes.
    assert "\r" not in out + err and "\x1b[" not in out + err
    assert "step 20/20" in out
    assert list(summaries) == STAGES
    assert summaries["data"]["clean/kept"] > 30  # of Shakespeare's 38 plays
    assert summaries["tokenizer"]["vocabulary_size"] > 500
    report = json.loads((tmp_path / "summary.json").read_text())
    assert list(report["seconds"]) == STAGES and all(s > 0 for s in report["seconds"].values())
    assert list(report["cpu_seconds"]) == STAGES
    assert all(s > 0 for s in report["cpu_seconds"].values())
    models = [r["model"] for r in report["results"]]
    assert models[:4] == ["GPT (pretrained)", "BERT (pretrained)", "classifier (MiniLM)",
                          "GPT + SFT"]  # fmt: skip
    assert models[4].startswith("demos: ") and models[5:] == ["tuned classifier"]
    demos = json.loads((tmp_path / "demos" / "demos.json").read_text())
    assert demos["pool_size"] == 100 and "knn" in demos["selectors"]
    # The page links every stage's outputs and only files that exist.
    page = (tmp_path / "index.html").read_text()
    links = set(re.findall(r"(?:href|src)='([^']+)'", page))
    assert all((tmp_path / link).exists() for link in links), links
    for stage in demo_stages.build(tmp_path, "tiny"):
        assert set(stage.outputs) <= links, stage.name
    assert "serve/responses.json" in links and "runs/gpt/curves.png" in links
    assert json.loads((tmp_path / "tuning" / "best_config.json").read_text())["task"] == (
        "classification"
    )
    served = json.loads((tmp_path / "serve" / "responses.json").read_text())
    assert served["url"].startswith("http://127.0.0.1:")
    labels = [p["labels"] for p in served["classifier"]["predictions"]]
    assert len(labels) == 2 and set(labels) <= {"rotten", "fresh"}
    assert all(isinstance(p["text"], str) for p in served["gpt"]["predictions"])
    stamps = {p.name: p.read_text() for p in (tmp_path / "stamps").iterdir()}
    assert len(stamps) == len(STAGES)

    again = demo.main(["--size", "tiny", "--out", str(tmp_path)])  # everything up to date
    assert {p.name: p.read_text() for p in (tmp_path / "stamps").iterdir()} == stamps
    assert again["classifier"] == summaries["classifier"]
    assert json.loads((tmp_path / "summary.json").read_text())["seconds"] == report["seconds"]
