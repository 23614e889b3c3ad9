r"""The data pipeline on Apache Beam: collect -> clean -> decontaminate -> dedup -> shard + report.

One `PrepareConfig` describes a run; `build_pipeline` adds the stages to a Beam pipeline,
so the same code runs on the local runner (in-process, or multi-process with
`direct_num_workers`) and on Flink, Spark or Dataflow (`--runner`). The output folder holds
`train-*`/`validation-*` shards, `dropped.jsonl` (every dropped record with its
`drop_reason`), `problems.jsonl` (file, line, reason of everything that could not be
read) and `report/` (JSON + HTML + PNG). Beam counters (`collect/records`,
`clean/kept`, ...) count what each stage did; with a `report` callable, each phase
(collected, cleaned, deduplicated, sharded) calls it once, when it ends, with its count
and the seconds since the pipeline was built (`tools/prepare_data.py` prints them with
`tfllm.progress.report_phase`).

Example:
    >>> from pathlib import Path
    >>> lee = (tfllm.assets.gensim_test_data_path() / "lee_background.cor").read_text()
    >>> news = lee.splitlines()[:20]  # one news article per line
    >>> Path("corpus").mkdir()
    >>> _ = Path("corpus/news.txt").write_text("\n".join(news + news[:2]))  # 2 repeated
    >>> config = PrepareConfig(inputs=("corpus/",), output="data/prepared", text_unit="line")
    >>> run_prepare(config, ["--runner=DirectRunner", "--direct_num_workers=2"])
    {'clean/kept': 22, 'collect/problems': 0, 'collect/records': 22, 'dedup/exact_duplicates': 2}
"""

import dataclasses
import json
import logging
import os
import time
from collections import Counter
from dataclasses import dataclass, field

import apache_beam as beam
import numpy as np
from apache_beam.options.pipeline_options import PipelineOptions

from pipelines import collect as collect_lib
from pipelines import dedup as dedup_lib
from pipelines.clean import CleanConfig, clean_record
from pipelines.shard import SHARD_FORMATS, WriteShards
from pipelines.stats import CorpusStats, write_report

counter = beam.metrics.Metrics.counter


@dataclass(frozen=True)
class PrepareConfig:
    """One data-preparation run. `clean` holds `CleanConfig` fields (thresholds)."""

    inputs: tuple[str, ...]
    output: str
    text_key: str = "text"
    text_unit: str = "file"
    clean: dict = field(default_factory=dict)
    exact_dedup: bool = True
    near_dedup: bool = True
    threshold: float = 0.7
    num_perm: int = 112
    ngram: int = 5
    bands: int = 14
    seed: int = 1
    decontaminate: tuple[str, ...] = ()  # evaluation files, read like `inputs`
    decontaminate_ngram: int = 13
    validation_fraction: float = 0.01
    num_shards: int = 4
    shard_format: str = "jsonl"

    def __post_init__(self):
        if not self.inputs:
            raise ValueError(f"`inputs` must name files or folders. Received: {self.inputs!r}")
        if self.shard_format not in SHARD_FORMATS:
            raise ValueError(
                f"`shard_format` must be one of {SHARD_FORMATS}. Received: {self.shard_format!r}"
            )
        if self.num_perm % self.bands:
            raise ValueError(
                f"`bands` must divide `num_perm` ({self.num_perm}). Received: bands={self.bands}"
            )
        if self.text_unit not in ("file", "paragraph", "line"):
            raise ValueError(
                f"`text_unit` must be file, paragraph or line. Received: {self.text_unit!r}"
            )
        if not 0.0 < self.threshold <= 1.0:
            raise ValueError(f"`threshold` must be in (0, 1]. Received: {self.threshold}")
        CleanConfig.from_dict(self.clean)  # Unknown filters fail now, not on a worker.

    @classmethod
    def from_dict(cls, values: dict) -> "PrepareConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        if set(values) - names:
            raise TypeError(f"Unknown PrepareConfig keys {sorted(set(values) - names)}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})


class _ReadFile(beam.DoFn):
    def __init__(self, text_key: str, text_unit: str):
        self.text_key, self.text_unit = text_key, text_unit

    def process(self, path):
        records = problems = 0
        for item in collect_lib.read_file(path, self.text_key, self.text_unit):
            if isinstance(item, collect_lib.Problem):
                problems += 1
                yield beam.pvalue.TaggedOutput("problems", item.to_dict())
            else:
                records += 1
                yield item
        counter("collect", "records").inc(records)
        counter("collect", "problems").inc(problems)
        logging.info("collect: %s: %d records, %d problems", path, records, problems)


class _Clean(beam.DoFn):
    def __init__(self, config: dict):
        self.config = CleanConfig.from_dict(config)

    def process(self, record):
        cleaned, reason = clean_record(record, self.config)
        counter("clean", "dropped" if reason else "kept").inc()
        if reason:
            yield beam.pvalue.TaggedOutput("dropped", {**cleaned, "drop_reason": reason})
        else:
            yield cleaned


def _exact_groups(item):
    _, records = item
    records = sorted(records, key=lambda r: r["id"])
    yield records[0]
    for record in records[1:]:
        counter("dedup", "exact_duplicates").inc()
        reason = f"exact_duplicate_of:{records[0]['id']}"
        yield beam.pvalue.TaggedOutput("dropped", {**record, "drop_reason": reason})


def _signatures(batch, num_perm, ngram, seed):
    signatures = dedup_lib.minhash_signatures([r["text"] for r in batch], num_perm, ngram, seed)
    for record, signature in zip(batch, signatures, strict=True):
        if not (signature == 0xFFFFFFFF).all():
            yield record["id"], signature


def _band_entries(item, bands):
    record_id, signature = item
    for band, key in enumerate(dedup_lib.band_keys(signature[None], bands)[0].tolist()):
        yield (band, key), (record_id, signature)


def _verified_edges(item, threshold):
    _, members = item
    members = sorted(members, key=lambda m: m[0])
    first_id, first = members[0]
    for other_id, other in members[1:]:
        if (first == other).mean() >= threshold:
            yield first_id, other_id


def _duplicate_of(edges) -> dict:
    """`{id: kept id}` for every id that is not the smallest of its connected component."""
    ids = sorted({i for edge in edges for i in edge})
    index = {i: n for n, i in enumerate(ids)}
    pairs = np.array([(index[a], index[b]) for a, b in edges], dtype=np.int64).reshape(-1, 2)
    roots = dedup_lib.connected_components(len(ids), pairs)
    return {ids[n]: ids[root] for n, root in enumerate(roots) if root != n}


def _drop_contaminated(record, eval_ngrams, ngram):
    if dedup_lib.contaminated(record["text"], eval_ngrams, ngram):
        counter("dedup", "contaminated").inc()
        yield beam.pvalue.TaggedOutput("dropped", {**record, "drop_reason": "contaminated"})
    else:
        yield record


def _drop_near_duplicates(record, duplicate_of):
    if record["id"] in duplicate_of:
        counter("dedup", "near_duplicates").inc()
        reason = f"near_duplicate_of:{duplicate_of[record['id']]}"
        yield beam.pvalue.TaggedOutput("dropped", {**record, "drop_reason": reason})
    else:
        yield record


class _StatsFn(beam.CombineFn):
    def create_accumulator(self):
        return CorpusStats()

    def add_input(self, accumulator, record):
        return accumulator.add(record)

    def merge_accumulators(self, accumulators):
        accumulators = iter(accumulators)
        merged = next(accumulators)
        for other in accumulators:
            merged.merge(other)
        return merged

    def extract_output(self, accumulator):
        return accumulator.result()


def _write_report(_, before, after, reasons, problems, examples, folder):
    report = {
        "before": before,
        "after": after,
        "drop_reasons": dict(Counter(reasons).most_common()),
        "problems": problems,
        "problem_examples": examples,
    }
    logging.info("report: %s", write_report(report, folder))  # through Beam's FileSystems


def _write_jsonl(pcoll, path: str, label: str):
    return (
        pcoll
        | f"{label}ToJson" >> beam.Map(lambda r: json.dumps(r, ensure_ascii=False))
        | f"Write{label}" >> beam.io.WriteToText(path, shard_name_template="", num_shards=1)
    )


def _phase_end(count: int, report, phase: str, noun: str, started: float) -> None:
    report(phase, time.time() - started, **{noun: count})


def _report_at_end(pcoll, report, phase: str, noun: str, started: float) -> None:
    """Calls `report` once every element of `pcoll` is there, with their count."""
    label = phase.capitalize()
    _ = (
        pcoll
        | f"Count{label}" >> beam.combiners.Count.Globally()
        | f"Report{label}" >> beam.Map(_phase_end, report, phase, noun, started)
    )


def build_pipeline(pipeline: beam.Pipeline, config: PrepareConfig, report=None) -> None:
    """Adds every stage of `config` to `pipeline` (run it with `pipeline.run()`).

    `report(phase, seconds, **counts)` (picklable; `None`: no reports) is called as each
    phase ends: `collected` (records), `cleaned` (kept), `deduplicated` (kept; when a
    dedup runs) and `sharded` (files), `seconds` counted from now.
    """
    started = time.time()  # wall clock: Beam may run the reports in other processes
    files = collect_lib.find_files(list(config.inputs))
    if not files:
        raise ValueError(f"`inputs` holds no readable formats. Received: {config.inputs}")
    read = (
        pipeline
        | "Files" >> beam.Create(files)
        | "Spread" >> beam.Reshuffle()
        | "Collect"
        >> beam.ParDo(_ReadFile(config.text_key, config.text_unit)).with_outputs(
            "problems", main="records"
        )
    )
    records, dropped = read.records, []
    cleaned = records | "Clean" >> beam.ParDo(_Clean(config.clean)).with_outputs(
        "dropped", main="kept"
    )
    kept = cleaned.kept
    dropped.append(cleaned.dropped)
    if report is not None:
        _report_at_end(records, report, "collected", "records", started)
        _report_at_end(kept, report, "cleaned", "kept", started)
    if config.decontaminate:  # First, so that no kept duplicate is a contaminated one.
        texts = [
            item["text"]
            for path in collect_lib.find_files(list(config.decontaminate))
            for item in collect_lib.read_file(path, config.text_key, config.text_unit)
            if isinstance(item, dict)
        ]
        eval_ngrams = dedup_lib.ngram_set(texts, config.decontaminate_ngram)
        clean_eval = kept | "Decontaminate" >> beam.FlatMap(
            _drop_contaminated, eval_ngrams, config.decontaminate_ngram
        ).with_outputs("dropped", main="kept")
        kept = clean_eval.kept
        dropped.append(clean_eval.dropped)
    if config.exact_dedup:
        exact = (
            kept
            | "ExactKey" >> beam.Map(lambda r: (dedup_lib.exact_hash(r["text"]), r))
            | "ExactGroup" >> beam.GroupByKey()
            | "ExactKeep" >> beam.FlatMap(_exact_groups).with_outputs("dropped", main="kept")
        )
        kept = exact.kept
        dropped.append(exact.dropped)
    if config.near_dedup:
        edges = (
            kept
            | "Batch" >> beam.BatchElements(min_batch_size=16, max_batch_size=512)
            | "MinHash" >> beam.FlatMap(_signatures, config.num_perm, config.ngram, config.seed)
            | "Bands" >> beam.FlatMap(_band_entries, config.bands)
            | "Buckets" >> beam.GroupByKey()
            | "Edges" >> beam.FlatMap(_verified_edges, config.threshold)
            | "Distinct" >> beam.Distinct()
        )
        duplicate_of = beam.pvalue.AsSingleton(
            edges | "AllEdges" >> beam.combiners.ToList() | "Components" >> beam.Map(_duplicate_of)
        )
        near = kept | "DropNear" >> beam.FlatMap(_drop_near_duplicates, duplicate_of).with_outputs(
            "dropped", main="kept"
        )
        kept = near.kept
        dropped.append(near.dropped)
    all_dropped = dropped | "AllDropped" >> beam.Flatten()
    out = config.output
    written = kept | "Shards" >> WriteShards(out, config.validation_fraction,
                                             config.num_shards, config.shard_format)  # fmt: skip
    if report is not None:
        if config.exact_dedup or config.near_dedup:
            _report_at_end(kept, report, "deduplicated", "kept", started)
        files = tuple(written.values()) | "WrittenFiles" >> beam.Flatten()
        _report_at_end(files, report, "sharded", "files", started)
    _write_jsonl(all_dropped, os.path.join(out, "dropped.jsonl"), "Dropped")
    _write_jsonl(read.problems, os.path.join(out, "problems.jsonl"), "Problems")
    side = beam.pvalue.AsSingleton
    before = records | "StatsBefore" >> beam.CombineGlobally(_StatsFn())
    after = kept | "StatsAfter" >> beam.CombineGlobally(_StatsFn())
    reasons = (
        all_dropped
        | "Reasons" >> beam.Map(lambda r: r["drop_reason"].split(":")[0])
        | "CountReasons" >> beam.combiners.Count.PerElement()
    )
    problems = read.problems | "CountProblems" >> beam.combiners.Count.Globally()
    examples = read.problems | "ProblemExamples" >> beam.combiners.Sample.FixedSizeGlobally(20)
    _ = (
        pipeline
        | "ReportTrigger" >> beam.Create([None])
        | "Report"
        >> beam.Map(
            _write_report,
            side(before),
            side(after),
            beam.pvalue.AsDict(reasons),
            side(problems),
            side(examples),
            os.path.join(out, "report"),
        )
    )


def run_prepare(config: PrepareConfig, beam_args: list[str] | None = None, report=None) -> dict:
    """Runs the pipeline to completion; returns the Beam counters `{"stage/name": value}`.

    `report`: called as each phase ends (see `build_pipeline`).
    """
    options = PipelineOptions(beam_args or [])
    pipeline = beam.Pipeline(options=options)
    build_pipeline(pipeline, config, report)
    result = pipeline.run()
    result.wait_until_finish()
    counters = result.metrics().query()["counters"]
    totals: Counter = Counter()
    for metric in counters:
        totals[f"{metric.key.metric.namespace}/{metric.key.metric.name}"] += metric.committed
    return dict(sorted(totals.items()))
