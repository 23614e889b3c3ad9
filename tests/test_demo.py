"""The README's main job runs end to end at a tiny size, then skips what is up to date."""

import json

import pytest

from tools import demo

STAGES = ["data", "tokenizer", "gpt", "bert", "classifier", "tune", "evaluate", "export", "serve"]


@pytest.mark.slow
@pytest.mark.assets
def test_demo_runs_every_stage_then_skips_them(tmp_path):
    summaries = demo.main(["--size", "tiny", "--out", str(tmp_path)])
    assert list(summaries) == STAGES
    assert summaries["data"]["clean/kept"] > 30  # of Shakespeare's 38 plays
    assert (tmp_path / "data" / "report" / "report.html").is_file()
    assert summaries["tokenizer"]["vocabulary_size"] > 500
    for run in ("gpt", "bert", "classifier"):
        assert (tmp_path / "runs" / run / "evaluation" / "report.json").is_file()
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
