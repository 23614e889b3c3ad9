"""tfllm.workflow: stages rerun exactly when their config or anything upstream changed."""

import json

import pytest

from tfllm.workflow import Stage, run_stages


def make_stages(tmp_path, calls, b_value=1, fail=()):
    def runner(name):
        def run(config_path):
            calls.append(name)
            if name in fail:
                raise RuntimeError(f"{name} failed")
            config = json.loads(config_path.read_text())
            (tmp_path / f"{name}.out").write_text(json.dumps(config))
            return {"value": config["value"]}

        return run

    return [
        Stage("a", {"value": 0}, runner("a"), outputs=("a.out",)),
        Stage("b", {"value": b_value}, runner("b"), outputs=("b.out",), after=("a",)),
        Stage("c", {"value": 2}, runner("c"), outputs=("c.out",), after=("b",)),
        Stage("d", {"value": 3}, runner("d"), outputs=("d.out",), after=("a",)),
    ]


def run(tmp_path, **kwargs):
    calls = []
    stages = make_stages(
        tmp_path, calls, **{k: kwargs.pop(k) for k in ("b_value", "fail") if k in kwargs}
    )
    summaries = run_stages(stages, tmp_path, log=lambda line: None, **kwargs)
    return calls, summaries


def test_stages_rerun_only_when_out_of_date(tmp_path):
    calls, summaries = run(tmp_path)
    assert calls == ["a", "b", "c", "d"] and summaries["c"] == {"value": 2}
    assert json.loads((tmp_path / "configs" / "b.json").read_text()) == {"value": 1}
    calls, summaries = run(tmp_path)
    assert calls == [] and summaries["b"] == {"value": 1}  # stored summaries
    calls, _ = run(tmp_path, b_value=5)  # b's config changed: b and c rerun, not a or d
    assert calls == ["b", "c"]
    calls, _ = run(tmp_path, b_value=5, force=["a"])  # a reruns: everything after it too
    assert calls == ["a", "b", "c", "d"]
    (tmp_path / "d.out").unlink()  # a missing output reruns its stage only
    calls, _ = run(tmp_path, b_value=5)
    assert calls == ["d"]
    calls, _ = run(tmp_path, b_value=5, force=True)
    assert calls == ["a", "b", "c", "d"]


def test_a_failed_stage_leaves_no_stamp_and_reruns(tmp_path):
    run(tmp_path)
    with pytest.raises(RuntimeError, match="b failed"):
        run(tmp_path, b_value=7, fail=("b",))
    assert not (tmp_path / "stamps" / "b.json").exists()
    calls, _ = run(tmp_path, b_value=7)
    assert calls == ["b", "c"]


def test_bad_stage_lists(tmp_path):
    def noop(path):
        return {}

    with pytest.raises(ValueError, match="unique"):
        run_stages([Stage("a", {}, noop), Stage("a", {}, noop)], tmp_path)
    with pytest.raises(ValueError, match="needs \\['z'\\]"):
        run_stages([Stage("a", {}, noop, after=("z",))], tmp_path)
    with pytest.raises(ValueError, match="unknown stages"):
        run_stages([Stage("a", {}, noop)], tmp_path, force=["b"])
    with pytest.raises(RuntimeError, match="without writing"):
        run_stages([Stage("a", {}, noop, outputs=("missing",))], tmp_path, log=lambda _: None)
