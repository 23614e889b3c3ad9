"""tfllm.io atomic writes; plots that leave matplotlib's process-wide state alone."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tfllm.io import atomic_path, atomic_write


def test_atomic_write_replaces_whole_files(tmp_path):
    path = tmp_path / "new" / "a.json"
    assert atomic_write(path, '{"a": "é"}') == path
    assert path.read_bytes() == '{"a": "é"}'.encode()
    atomic_write(path, b"\x00\x01")
    assert path.read_bytes() == b"\x00\x01"
    assert os.listdir(path.parent) == ["a.json"]  # no temporaries left
    assert path.stat().st_mode & 0o044  # readable by others (not mkstemp's 0600)
    with pytest.raises(TypeError, match="`data`"):
        atomic_write(path, {"a": 1})
    assert path.read_bytes() == b"\x00\x01"


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "model.keras"
    path.write_bytes(b"old")
    with pytest.raises(OSError, match="disk full"), atomic_path(path) as temp:
        assert temp.parent == tmp_path and temp.suffix == ".keras" and temp.name[0] == "."
        temp.write_bytes(b"half")
        raise OSError("disk full")
    assert path.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["model.keras"]


def test_atomic_path_stages_a_folder(tmp_path):
    target = tmp_path / "export" / "3"
    with pytest.raises(RuntimeError), atomic_path(target) as temp:
        temp.mkdir()
        (temp / "saved_model.pb").write_bytes(b"half")
        raise RuntimeError
    assert os.listdir(tmp_path / "export") == []
    with atomic_path(target) as temp:
        temp.mkdir()
        (temp / "saved_model.pb").write_bytes(b"pb")
    assert os.listdir(tmp_path / "export") == ["3"]
    assert (target / "saved_model.pb").read_bytes() == b"pb"


def test_plots_leave_the_matplotlib_backend_alone(tmp_path):
    # A fresh process: importing the modules is part of what is checked.
    script = textwrap.dedent(f"""
        import sys
        from pathlib import Path
        import matplotlib
        matplotlib.use("svg")
        from tfllm import plots, tuning
        from pipelines import stats
        out = Path({str(tmp_path)!r})
        plots.plot_history({{"step": [1, 2], "loss": [2.0, 1.0]}}, out / "curves.png")
        plots.plot_confusion_matrix([[3, 1], [0, 4]], ["a", "b"], out / "confusion.png")
        tuning.plot_trials([1.0, None, 0.5], "loss", "min", out / "trials.png")
        result = stats.corpus_stats([{{"text": "a b c"}}])
        report = {{"before": result, "after": result, "drop_reasons": {{"short": 2}}}}
        stats.write_report(report, out / "report")
        pyplot = sys.modules.get("matplotlib.pyplot")  # Keras imports it, tfllm must not use it
        print(matplotlib.get_backend(), len(pyplot.get_fignums()) if pyplot else 0)
    """)
    env = {k: v for k, v in os.environ.items() if k != "MPLBACKEND"}
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env,
        cwd=Path(__file__).parents[1], check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split()[-2:] == ["svg", "0"]
    pngs = [*tmp_path.glob("*.png"), *(tmp_path / "report").glob("*.png")]
    assert len(pngs) == 6
    assert all(p.read_bytes().startswith(b"\x89PNG\r\n\x1a\n") for p in pngs)
