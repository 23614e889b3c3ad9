"""How the stages of `tools/demo.py` that are more than one tool call run.

Each `run_<stage>(config_path) -> summary` reads the JSON config `tools.demo_stages.build`
wrote and goes through the project's tools: `run_sft` writes the instruction-tuning files,
then trains; `run_tune` searches, then trains the untuned configuration the search must
beat; `run_demos` scores demonstration selectors against random ones; `run_evaluate`,
`run_export` and `run_serve` evaluate, export and serve the runs (the server is queried
over HTTP on 127.0.0.1).
"""

import dataclasses
import json
import urllib.request
from pathlib import Path

from export.serve import ModelConfig, ModelServer
from tfllm.config import RunConfig
from tfllm.demonstrations import report_markdown
from tfllm.io import atomic_write
from tfllm.tuning import run_trial_process
from tools import evaluate, export, train, tune
from tools.demo_data import sft_files


def run_sft(path: Path) -> dict:
    """Writes the instruction-tuning files (a corpus line or a review: which?), then trains."""
    config = json.loads(path.read_text())
    data = Path(config["train"]["train_files"][0]).parent.parent
    sft_files(data, Path(config["reviews"]), config["prompt"], config["answers"],
              config["examples"])  # fmt: skip
    run_config = path.parent / "sft_run.json"
    atomic_write(run_config, json.dumps(config["train"], indent=1))
    return train.main(["--config", str(run_config)])


def run_tune(path: Path) -> dict:
    """The search, then the untuned configuration (the RunConfig defaults) trained the same
    way, whose score the search must beat. The stage runs only when its outputs are missing
    or its config changed, so the search starts over (`--overwrite`) rather than resume."""
    config = json.loads(path.read_text())
    base = path.parent / "tune_base.json"
    atomic_write(base, json.dumps(config["base"], indent=1))
    summary = tune.main(config["argv"])
    untuned = RunConfig.load(base, ["--name=untuned"])
    untuned = dataclasses.replace(
        untuned, search_space={}, output_dir=str(path.parent.parent / "tuning" / "runs")
    )
    return {**summary, "untuned_value": run_trial_process(untuned)["val_accuracy"]}


def run_demos(path: Path) -> dict:
    """In-context demonstration selectors against random ones (`tools.evaluate demos`);
    also writes the report's table as `demos.md` beside `demos.json`."""
    argv = json.loads(path.read_text())["argv"]
    report = evaluate.main(argv)
    command = "python -m tools.evaluate " + " ".join(argv)
    atomic_write(Path(argv[argv.index("--output") + 1]) / "demos.md",
                 report_markdown(report, command))  # fmt: skip
    agreement = {name: m["label_agreement"] for name, m in report["selectors"].items()}
    return {"k": report["k"], "label_agreement": agreement,
            "query_majority": report["query_majority"]}  # fmt: skip


def run_evaluate(path: Path) -> dict:
    runs = json.loads(path.read_text())["runs"]
    reports = {Path(r).name: evaluate.main(["run", r]) for r in runs}
    return {name: {"scores": r["scores"], "baseline": r.get("baseline", {})}
            for name, r in reports.items()}  # fmt: skip


def run_export(path: Path) -> dict:
    return {argv[0]: str(export.main(argv)) for argv in json.loads(path.read_text())["argv_list"]}


def run_serve(path: Path) -> dict:
    """Serves the exports on 127.0.0.1 and asks each model over HTTP."""
    config = json.loads(path.read_text())
    server = ModelServer([ModelConfig(name, p) for name, p in config["models"].items()])
    url = server.start("127.0.0.1", 0)
    requests = {
        "classifier": {"signature_name": "classify", "instances": config["queries"]},
        "gpt": {"signature_name": "generate", "instances": config["prompts"]},
    }
    try:
        answers = {m: _post(f"{url}/v1/models/{m}:predict", r) for m, r in requests.items()}
    finally:
        server.stop()
    summary = {"url": url, "requests": requests, **answers}
    out = path.parent.parent / "serve" / "responses.json"
    atomic_write(out, json.dumps(summary, indent=1, ensure_ascii=False))
    return summary


def _post(url: str, body: dict) -> dict:
    request = urllib.request.Request(
        url, json.dumps(body).encode(), {"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=120) as response:
        return json.loads(response.read())
