"""The README's main job runs end to end at a tiny size."""

import pytest

from tools import demo


@pytest.mark.slow
@pytest.mark.assets
def test_demo_trains_saves_and_reloads(tmp_path, capsys):
    demo.main(["--steps", "12", "--out", str(tmp_path)])
    report = capsys.readouterr().out
    assert "38 plays" in report
    assert (tmp_path / "gpt.keras").is_file() and (tmp_path / "bert.keras").is_file()
    assert report.count("reload: identical outputs") == 2
