"""The Beam pipeline end to end on the local runner (in-process, tiny real inputs), shards
read back by pipelines.datasets, the report against independent counts, write_shards."""

import json
import os
import posixpath
import re
import zlib

import pytest
from apache_beam.io.localfilesystem import LocalFileSystem

from pipelines import dedup
from pipelines.clean import clean_text
from pipelines.datasets import read_documents
from pipelines.prepare import PrepareConfig, run_prepare
from pipelines.shard import split_of, write_shards
from pipelines.stats import corpus_stats, write_report
from tfllm import assets

pytestmark = pytest.mark.assets


@pytest.fixture(scope="module")
def lee():
    text = (assets.gensim_test_data_path() / "lee_background.cor").read_text()
    return [line.strip() for line in text.splitlines() if len(line.split()) > 80][:24]


@pytest.fixture(scope="module")
def prepared(tmp_path_factory, lee):
    root = tmp_path_factory.mktemp("prepare")
    (root / "in").mkdir()
    (root / "eval").mkdir()
    near = lee[1].split()
    near[20] = near[40] = "changed"
    planted = {
        "dup": lee[0].upper(),  # exact duplicate after normalization
        "near": " ".join(near),  # near-duplicate
        "leak": lee[5] + " " + lee[22],  # contains an evaluation document
        "junk": lee[2] + " Lorem ipsum dolor sit amet.",
    }
    with open(root / "in" / "docs.jsonl", "w") as f:
        for i, text in enumerate(lee[:22]):
            f.write(json.dumps({"id": f"lee{i:02d}", "text": text}) + "\n")
        for key, text in planted.items():
            f.write(json.dumps({"id": key, "text": text}) + "\n")
        f.write('{"id": "broken", "text": \n')
    (root / "in" / "notes.txt").write_bytes(b"\xff\xfe not utf-8\n")
    (root / "eval" / "test.txt").write_text(lee[22])
    config = PrepareConfig(
        inputs=(str(root / "in"),),
        output=str(root / "out"),
        decontaminate=(str(root / "eval"),),
        validation_fraction=0.2,
        num_shards=2,
        shard_format="tfrecord",
    )
    counters = run_prepare(config, ["--runner=DirectRunner"])
    return root / "out", counters, lee


def test_pipeline_drops_planted_records_with_reasons(prepared):
    out, counters, lee = prepared
    assert counters == {
        "clean/dropped": 1,
        "clean/kept": 25,
        "collect/problems": 3,
        "collect/records": 26,
        "dedup/contaminated": 1,
        "dedup/exact_duplicates": 1,
        "dedup/near_duplicates": 1,
    }
    lines = (out / "dropped.jsonl").read_text().splitlines()
    dropped = {r["id"]: r["drop_reason"] for r in map(json.loads, lines)}
    assert dropped == {
        "junk": "c4_lorem_ipsum",
        "lee00": "exact_duplicate_of:dup",  # the smallest id of the group is kept
        "near": "near_duplicate_of:lee01",
        "leak": "contaminated",
    }
    problems = [json.loads(line) for line in (out / "problems.jsonl").read_text().splitlines()]
    assert sorted((p["file"].rsplit("/", 1)[1], p["line"]) for p in problems) == [
        ("docs.jsonl", 27),  # malformed JSON
        ("notes.txt", 0),  # empty document (its only line did not decode)
        ("notes.txt", 1),  # bad encoding
    ]


def test_shards_are_read_by_datasets_with_a_stable_split(prepared):
    out, _, lee = prepared
    kept_ids = [f"lee{i:02d}" for i in range(1, 22)] + ["dup"]
    # Kept texts are the cleaned ones (normalized whitespace, PII placeholders).
    texts = {i: clean_text(lee[int(i[3:])] if i != "dup" else lee[0].upper()) for i in kept_ids}
    for split in ("train", "validation"):
        files = sorted(str(p) for p in out.glob(f"{split}-*-of-00002.tfrecord"))
        read = sorted(t.decode() for t in read_documents(files, "tfrecord").as_numpy_iterator())
        expected = sorted(texts[i] for i in kept_ids if split_of(i, 0.2) == split)
        assert read == expected and read


def test_report_matches_independent_counts(prepared):
    out, _, lee = prepared
    report = json.loads((out / "report" / "report.json").read_text())
    assert report["before"]["documents"] == 26 and report["after"]["documents"] == 22
    assert report["before"]["exact_duplicate_rate"] == pytest.approx(1 / 26)
    assert report["after"]["exact_duplicate_rate"] == 0.0
    assert report["drop_reasons"] == {
        "c4_lorem_ipsum": 1,
        "exact_duplicate_of": 1,
        "near_duplicate_of": 1,
        "contaminated": 1,
    }
    assert report["problems"] == 3
    kept = [clean_text(lee[i]) for i in range(1, 22)] + [clean_text(lee[0].upper())]
    tokens = [t for text in kept for t in re.findall(r"[a-z0-9]+", text.lower())]
    after = report["after"]
    assert after["tokens"] == len(tokens)
    assert after["type_token_ratio"] == pytest.approx(len(set(tokens)) / len(tokens))
    raw = sum(len(t.encode()) for t in kept)
    packed = sum(len(zlib.compress(t.encode(), 6)) for t in kept)
    assert after["compression_ratio"] == pytest.approx(raw / packed)
    assert after["languages"] == {"en": 22}
    html = (out / "report" / "report.html").read_text()
    assert "lengths_after.png" in html and (out / "report" / "lengths_after.png").stat().st_size
    assert not list(out.glob("beam-temp*"))


class _TestFileSystem(LocalFileSystem):
    """`tfllmtest://<local path>`: a scheme Beam's `FileSystems` serves and `open` cannot."""

    PREFIX = "tfllmtest://"

    @classmethod
    def scheme(cls):
        return "tfllmtest"

    def _local(self, path):
        return path.removeprefix(self.PREFIX)

    def split(self, path):
        return posixpath.split(path)

    def create(self, path, *args, **kwargs):
        return super().create(self._local(path), *args, **kwargs)

    def rename(self, sources, destinations):
        super().rename([self._local(p) for p in sources], [self._local(p) for p in destinations])

    def delete(self, paths):
        super().delete([self._local(p) for p in paths])

    def exists(self, path):
        return super().exists(self._local(path))


def test_report_goes_through_beam_filesystems(tmp_path, monkeypatch):
    # A cluster worker writes an output URL (gs://, hdfs://) through Beam's FileSystems;
    # local `open`/`pathlib` would take the URL for a relative folder of its own disk.
    monkeypatch.chdir(tmp_path)
    stats = corpus_stats([{"text": "one two three"}, {"text": "four five"}])
    report = {"before": stats, "after": stats, "drop_reasons": {"contaminated": 1}}
    url = f"{_TestFileSystem.PREFIX}{tmp_path}/out/report"
    for _ in range(2):  # the second run replaces the first one's files
        assert write_report(report, url) == f"{url}/report.html"
    names = ["drop_reasons.png", "lengths_after.png", "lengths_before.png"]
    assert sorted(os.listdir(tmp_path / "out" / "report")) == sorted(
        [*names, "report.html", "report.json"]
    )
    assert json.loads((tmp_path / "out" / "report" / "report.json").read_text()) == report
    assert os.listdir(tmp_path) == ["out"]  # nothing landed in the working directory


def test_write_shards_jsonl_and_atomic_failure(tmp_path, lee):
    records = [{"id": f"d{i}", "text": t, "source": "lee"} for i, t in enumerate(lee)]
    paths = write_shards(records, tmp_path / "shards", validation_fraction=0.25, num_shards=3)
    train = sorted(t.decode() for t in read_documents(paths["train"], "jsonl").as_numpy_iterator())
    assert train == sorted(r["text"] for r in records if split_of(r["id"], 0.25) == "train")
    assert len(paths["train"]) == 3 and paths["validation"]

    def failing():
        yield records[0]
        raise RuntimeError("source failed")

    with pytest.raises(RuntimeError, match="source failed"):
        write_shards(failing(), tmp_path / "failed")
    assert list((tmp_path / "failed").iterdir()) == []


def test_stats_of_duplicates_and_config_errors(lee):
    stats = corpus_stats([{"text": lee[0]}, {"text": lee[0] + "!"}, {"text": lee[1]}])
    assert stats["exact_duplicate_rate"] == pytest.approx(1 / 3)
    assert dedup.exact_hash(lee[0]) == dedup.exact_hash(lee[0] + "!")
    with pytest.raises(TypeError, match="Unknown clean filters"):
        PrepareConfig(inputs=("x",), output="y", clean={"gopher_min_wordz": 1})
    with pytest.raises(ValueError, match="shard_format"):
        PrepareConfig(inputs=("x",), output="y", shard_format="csv")
    with pytest.raises(ValueError, match="text_unit"):
        PrepareConfig(inputs=("x",), output="y", text_unit="sentence")
    with pytest.raises(ValueError, match="bands"):
        PrepareConfig(inputs=("x",), output="y", bands=5)


def test_prepare_data_tool_options():
    from tools.prepare_data import beam_arguments, parse_overrides

    values = parse_overrides(
        {"inputs": ["a"], "output": "o"},
        ["--num_shards=8", '--clean={"languages": ["en"]}', "--shard-format=tfrecord"],
    )
    config = PrepareConfig.from_dict(values)
    assert (config.num_shards, config.shard_format, config.inputs) == (8, "tfrecord", ("a",))
    assert config.clean == {"languages": ["en"]}
    assert beam_arguments("DirectRunner", 2, ["--x=1"]) == [
        "--runner=DirectRunner",
        "--direct_num_workers=2",
        "--direct_running_mode=multi_processing",
        "--x=1",
    ]
    assert beam_arguments("FlinkRunner", 2, []) == ["--runner=FlinkRunner"]
    with pytest.raises(ValueError, match="--key=value"):
        parse_overrides({}, ["num_shards=8"])


def test_prepare_data_tool_prints_a_plain_line_per_phase(tmp_path, lee, capfd):
    from tools import prepare_data

    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "news.txt").write_text("\n".join(lee[:6] + lee[:2]))  # 2 repeated
    out = tmp_path / "out"
    counters = prepare_data.main(
        [f"--inputs={json.dumps([str(tmp_path / 'in')])}", f"--output={out}",
         "--text_unit=line", "--num_shards=1", "--validation_fraction=0.3"]
    )  # fmt: skip
    text = capfd.readouterr().out
    assert "\r" not in text and "\x1b[" not in text
    phases = {}
    for line in text.splitlines():
        match = re.fullmatch(r"prepare: (\w+)  (\w+) (\d+)  (\d+\.\d) s", line)
        if match:
            phases[match[1]] = (match[2], int(match[3]), float(match[4]))
    assert sorted(phases) == ["cleaned", "collected", "deduplicated", "sharded"]
    assert phases["collected"][:2] == ("records", 8) == ("records", counters["collect/records"])
    assert phases["cleaned"][:2] == ("kept", counters["clean/kept"])
    shards = sorted(out.glob("train-*.jsonl")) + sorted(out.glob("validation-*.jsonl"))
    kept = sum(len(p.read_text().splitlines()) for p in shards)
    assert phases["deduplicated"][:2] == ("kept", kept) == ("kept", counters["clean/kept"] - 2)
    assert counters["dedup/exact_duplicates"] == 2
    assert phases["sharded"][:2] == ("files", len(shards)) == ("files", 2)
    assert all(0 <= seconds < 600 for _, _, seconds in phases.values())
