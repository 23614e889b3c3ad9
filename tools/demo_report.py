"""What `tools/demo.py` shows: each model against its baseline, stage times, `index.html`.

`results(summaries)` gives one row per model: its score, the baseline it must beat
(unigram model, majority class, random demonstrations, the untuned configuration) and the
margin. `summary_table` prints them with each stage's wall and CPU seconds; `index_html`
is `<root>/index.html`, a static page linking every stage's outputs (plots inline) that
opens from disk.
"""

import html
import json
from pathlib import Path

# (model, evaluated run or stage, metric, its key, baseline key, what the baseline is,
#  whether lower is better)
RESULTS = (
    ("GPT (pretrained)", "gpt", "validation perplexity", "perplexity", "unigram_perplexity",
     "unigram model", True),
    ("BERT (pretrained)", "bert", "masked-LM accuracy", "accuracy", "unigram_accuracy",
     "unigram: most frequent token", False),
    ("classifier (MiniLM)", "classifier", "test accuracy", "accuracy", "accuracy",
     "majority class", False),
    ("GPT + SFT", "sft", "answer accuracy (generated)", "accuracy", "majority_accuracy",
     "majority answer", False),
)  # fmt: skip


def results(summaries: dict) -> list[dict]:
    """`[{model, metric, score, baseline, baseline_name, margin, beats}]` for the models
    evaluated (and the tuning search) in `summaries`."""
    rows = []
    evaluated = summaries.get("evaluate") or {}
    for model, run, metric, key, base, base_name, lower in RESULTS:
        report = evaluated.get(run)
        if report and key in report["scores"] and base in report["baseline"]:
            rows.append(_row(model, metric, report["scores"][key], report["baseline"][base],
                             base_name, lower))  # fmt: skip
    demos = summaries.get("demos") or {}
    if "label_agreement" in demos:
        agreement = demos["label_agreement"]
        best = max((name for name in agreement if name != "random"), key=agreement.get)
        rows.append(_row(f"demos: {best}", f"label agreement (k={demos['k']})",
                         agreement[best], agreement["random"], "random demonstrations",
                         False))  # fmt: skip
    tune = summaries.get("tune") or {}
    if "untuned_value" in tune:
        rows.append(_row("tuned classifier", f"best {tune['objective']}", tune["best_value"],
                         tune["untuned_value"], "untuned configuration", False))  # fmt: skip
    return rows


def _row(model, metric, score, baseline, baseline_name, lower) -> dict:
    margin = float(score) - float(baseline)
    beats = margin < 0 if lower else margin > 0
    return {"model": model, "metric": metric, "score": float(score),
            "baseline": float(baseline), "baseline_name": baseline_name, "margin": margin,
            "beats": beats}  # fmt: skip


def headline(stage: str, summary) -> str:
    """A short line of the figures that matter for one stage's summary."""
    if not isinstance(summary, dict):
        return str(summary)[:100]
    keys = ("clean/kept", "vocabulary_size", "step", "val_loss", "val_perplexity",
            "val_mlm_accuracy", "test_accuracy", "best_value", "untuned_value", "url")  # fmt: skip
    shown = {k: summary[k] for k in keys if k in summary}
    if stage == "evaluate":
        shown = {run: report["scores"].get("accuracy") for run, report in summary.items()}
    if stage == "demos":
        shown = summary["label_agreement"]
    if stage == "export":
        shown = {Path(run).name: path for run, path in summary.items()}
    text = json.dumps(shown or summary, default=lambda v: f"{v:.4g}", ensure_ascii=False)
    return text if len(text) < 110 else text[:107] + "..."


def _number(value: float) -> str:
    return f"{value:.4g}"


def _cpu(value) -> str:
    return "-" if value is None else f"{value:.1f}"  # stamps written before CPU was kept


def summary_table(summaries: dict, seconds: dict, cpu_seconds: dict, root: Path) -> str:
    """Stages with their wall and CPU seconds, then every model against its baseline."""
    lines = [f"{'stage':12s} {'wall s':>8s} {'CPU s':>8s}  result"]
    for stage, summary in summaries.items():
        lines.append(f"{stage:12s} {seconds[stage]:8.1f} {_cpu(cpu_seconds[stage]):>8s}  "
                     f"{headline(stage, summary)}")  # fmt: skip
    known = [v for v in cpu_seconds.values() if v is not None]
    lines.append(f"{'total':12s} {sum(seconds.values()):8.1f} {sum(known):8.1f}\n")
    lines.append(f"{'model':20s} {'metric':28s} {'score':>8s} {'baseline':>8s} "
                 f"{'margin':>8s}  beats  baseline is")  # fmt: skip
    for r in results(summaries):
        lines.append(
            f"{r['model']:20s} {r['metric']:28s} {_number(r['score']):>8s} "
            f"{_number(r['baseline']):>8s} {r['margin']:+8.3g}  "
            f"{'yes' if r['beats'] else 'NO':5s}  {r['baseline_name']}"
        )
    lines.append(f"\npage: {root / 'index.html'}   summary: {root / 'summary.json'}")
    lines.append(f"TensorBoard: tensorboard --logdir {root / 'runs'} --host 127.0.0.1")
    return "\n".join(lines)


def _cell(value) -> str:
    return f"<td>{html.escape(value if isinstance(value, str) else _number(value))}</td>"


def index_html(stages, summaries: dict, seconds: dict, cpu_seconds: dict, root: Path) -> str:
    """The page: the results table, then per stage its times, headline and outputs."""
    head = ("model", "metric", "score", "baseline", "margin", "beats", "baseline is")
    rows = [
        "<tr>" + "".join(_cell(r[k]) for k in ("model", "metric", "score", "baseline"))
        + _cell(f"{r['margin']:+.3g}") + _cell("yes" if r["beats"] else "NO")
        + _cell(r["baseline_name"]) + "</tr>"
        for r in results(summaries)
    ]  # fmt: skip
    parts = [
        "<!doctype html><meta charset='utf-8'><title>tfllm demo</title>",
        "<style>body{font-family:sans-serif;max-width:60em;margin:auto}"
        "td,th{padding:2px 8px;text-align:left}img{max-width:45%;margin:4px}</style>",
        "<h1>tfllm demo: raw text to a served model</h1>",
        f"<p>Total wall time {sum(seconds.values()):.0f} s, CPU time "
        f"{sum(v for v in cpu_seconds.values() if v is not None):.0f} s. "
        "<a href='summary.json'>summary.json</a></p>",
        "<h2>Every model against its baseline</h2><table>",
        "<tr>" + "".join(f"<th>{h}</th>" for h in head) + "</tr>",
        *rows,
        "</table>",
    ]
    for stage in stages:
        summary = summaries[stage.name]
        times = f"{seconds[stage.name]:.1f} s wall, {_cpu(cpu_seconds[stage.name])} s CPU"
        parts.append(f"<h2 id='{stage.name}'>{stage.name} ({times})</h2>")
        parts.append(f"<p><code>{html.escape(headline(stage.name, summary))}</code></p><ul>")
        config = f"configs/{stage.name}.json"
        for output in (config, *stage.outputs):
            parts.append(f"<li><a href='{html.escape(output)}'>{html.escape(output)}</a></li>")
        parts.append("</ul>")
        parts += [f"<img src='{html.escape(o)}' alt='{html.escape(o)}'>"
                  for o in stage.outputs if o.endswith(".png")]  # fmt: skip
        if stage.name == "serve":
            answers = json.dumps(summary, indent=1, ensure_ascii=False)
            parts.append(f"<pre>{html.escape(answers)}</pre>")
    return "\n".join(parts) + "\n"
