r"""Multi-stage jobs whose stages are skipped while their outputs are up to date.

A `Stage` runs from one JSON config file, written to `<root>/configs/<name>.json` so the
stage can also be rerun alone with its own tool. After a stage succeeds, a stamp
`<root>/stamps/<name>.json` records a hash of its config and of the stamps of the stages
it depends on (each stamp carries the time its run finished), with its summary, its wall
`seconds` and its `cpu_seconds` (user + system time of this process and of the child
processes it waited for: far less sensitive than wall time to other work on the machine).
`run_stages` skips a stage whose outputs all exist and whose stamp matches; a changed
config, or any rerun upstream, reruns everything downstream. `force` reruns the stages
named (or all).

Example:
>>> import json
>>> from pathlib import Path
>>> def run_data(config_path):  # a stage reads its config file and writes its outputs
...     lines = json.loads(Path(config_path).read_text())["lines"]
...     Path("runs/demo/data").mkdir(exist_ok=True)
...     Path("runs/demo/data/train.txt").write_text("a b\n" * lines)
...     return {"lines": lines}
>>> def run_count(config_path):
...     return {"words": len(Path("runs/demo/data/train.txt").read_text().split())}
>>> stages = [Stage("data", {"lines": 3}, run_data, outputs=("data/train.txt",)),
...           Stage("count", {}, run_count, after=("data",))]
>>> run_stages(stages, "runs/demo")
[data] running from runs/demo/configs/data.json
[data] done in ... s (... s CPU)
[count] running from runs/demo/configs/count.json
[count] done in ... s (... s CPU)
{'data': {'lines': 3}, 'count': {'words': 6}}
>>> summaries = run_stages(stages, "runs/demo")  # nothing changed: both skipped
[data] up to date, skipped (runs/demo/configs/data.json)
[count] up to date, skipped (runs/demo/configs/count.json)
"""

import dataclasses
import hashlib
import json
import resource
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from tfllm.io import atomic_write


@dataclasses.dataclass(frozen=True)
class Stage:
    """One step of a job.

    Args:
        name: unique name; also the config and stamp file names.
        config: JSON-able dict, written to `<root>/configs/<name>.json`.
        run: `run(config_path) -> summary dict` (JSON-able).
        outputs: paths (relative to the root, or absolute) the stage must produce.
        after: names of the stages whose results it uses.
    """

    name: str
    config: dict
    run: Callable[[Path], dict]
    outputs: tuple[str, ...] = ()
    after: tuple[str, ...] = ()


def cpu_seconds() -> float:
    """User + system CPU seconds of this process and of its waited-for children so far."""
    own, children = (resource.getrusage(who) for who in
                     (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))  # fmt: skip
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def _write_json(path: Path, value) -> None:
    atomic_write(path, json.dumps(value, indent=1, default=str))


def run_stages(
    stages: Iterable[Stage],
    root,
    force: bool | Iterable[str] = False,
    log: Callable[[str], None] = print,
) -> dict[str, dict]:
    """Runs `stages` in order; returns `{name: summary}` (stored summaries when skipped).

    Args:
        stages: in an order where every stage comes after the ones it names in `after`.
        root: the job folder (configs, stamps and relative outputs live there).
        force: `True` reruns every stage; a collection of names reruns those and
            everything that depends on them.
        log: receives one line per stage.
    """
    root = Path(root)
    stages = list(stages)
    names = [s.name for s in stages]
    if len(set(names)) != len(names):
        raise ValueError(f"Stage names must be unique. Received: {names}")
    forced = set(names) if force is True else set(force or ())
    if forced - set(names):
        raise ValueError(f"`force` names unknown stages {sorted(forced - set(names))}: {names}")
    hashes, stamps, summaries = {}, {}, {}
    for stage in stages:
        missing = [name for name in stage.after if name not in stamps]
        if missing:
            raise ValueError(f"Stage {stage.name!r} needs {missing} to run before it.")
        config_path = root / "configs" / f"{stage.name}.json"
        _write_json(config_path, stage.config)
        digest = hashlib.sha256(json.dumps(stage.config, sort_keys=True, default=str).encode())
        for name in stage.after:
            digest.update(json.dumps([stamps[name]["hash"], stamps[name]["finished"]]).encode())
        hashes[stage.name] = digest.hexdigest()
        stamp_path = root / "stamps" / f"{stage.name}.json"
        stamp = json.loads(stamp_path.read_text()) if stamp_path.is_file() else {}
        outputs = [root / output for output in stage.outputs]
        if (
            stage.name not in forced
            and stamp.get("hash") == hashes[stage.name]
            and all(p.exists() for p in outputs)
        ):
            log(f"[{stage.name}] up to date, skipped ({config_path})")
            stamps[stage.name], summaries[stage.name] = stamp, stamp["summary"]
            continue
        log(f"[{stage.name}] running from {config_path}")
        stamp_path.unlink(missing_ok=True)  # a failed run leaves no stale stamp behind
        started, cpu_started = time.perf_counter(), cpu_seconds()
        summary = stage.run(config_path)
        seconds, cpu = time.perf_counter() - started, cpu_seconds() - cpu_started
        absent = [str(p) for p in outputs if not p.exists()]
        if absent:
            raise RuntimeError(f"Stage {stage.name!r} finished without writing {absent}.")
        stamp = {
            "hash": hashes[stage.name],
            "finished": time.time(),
            "seconds": seconds,
            "cpu_seconds": cpu,
            "summary": summary,
        }
        _write_json(stamp_path, stamp)
        log(f"[{stage.name}] done in {seconds:.1f} s ({cpu:.1f} s CPU)")
        stamps[stage.name], summaries[stage.name] = stamp, summary
    return summaries
