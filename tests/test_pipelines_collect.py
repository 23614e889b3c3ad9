"""pipelines.collect: every format read into records; bad input becomes Problems with file
and line, never an exception, and never costs the other records of the file."""

import bz2
import gzip
import itertools
import json

import pytest

from pipelines import collect
from tfllm import assets

WIKI = "enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"


def _split(items):
    records = [i for i in items if isinstance(i, dict)]
    problems = [i for i in items if isinstance(i, collect.Problem)]
    assert len(records) + len(problems) == len(items)
    return records, problems


def test_jsonl_errors_are_reported_with_line_and_other_records_kept(tmp_path):
    path = tmp_path / "docs.jsonl"
    lines = [
        json.dumps({"id": "a", "text": "first document"}).encode(),
        b'{"id": "b", "text": "unterminated',
        json.dumps({"id": "c", "text": "   "}).encode(),
        b'{"id": "d", "text": "bad \xff\xfe bytes"}',
        json.dumps({"text": "no id", "lang": "en"}).encode(),
        b"",
    ]
    path.write_bytes(b"\n".join(lines))
    records, problems = _split(list(collect.read_file(str(path))))
    assert [(r["id"], r["text"]) for r in records] == [
        ("a", "first document"),
        (f"{path}:5", "no id"),
    ]
    assert records[1]["lang"] == "en" and records[1]["source"] == str(path)
    assert [(p.file, p.line) for p in problems] == [(str(path), 2), (str(path), 3), (str(path), 4)]
    assert problems[0].reason.startswith("malformed JSON")
    assert problems[2].reason.startswith("bad encoding")


def test_text_csv_parquet_compressed_and_broken_files(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    (tmp_path / "a.txt").write_bytes(b"Paragraph one.\n\nParagraph \xff two.\n")
    (tmp_path / "b.csv").write_text('id,text\n1,"Row one, quoted"\n2,\n3,Row three\n')
    pq.write_table(
        pa.table({"text": ["Parquet one", None, "Parquet three"]}), tmp_path / "c.parquet"
    )
    with gzip.open(tmp_path / "d.jsonl.gz", "wt") as f:
        f.write(json.dumps({"id": "z", "text": "zipped"}) + "\n")
    (tmp_path / "e.jsonl.gz").write_bytes(b"not gzip at all")
    (tmp_path / "notes.rtf").write_text("ignored format")
    items = list(collect.collect([str(tmp_path)], text_unit="paragraph"))
    records, problems = _split(items)
    assert [r["text"] for r in records] == [
        "Paragraph one.",
        "Row one, quoted",
        "Row three",
        "Parquet one",
        "Parquet three",
        "zipped",
    ]
    assert [(p.file.rsplit("/", 1)[1], p.line) for p in problems] == [
        ("a.txt", 3),
        ("b.csv", 3),
        ("c.parquet", 2),
        ("e.jsonl.gz", 0),
    ]
    assert problems[-1].reason.startswith("unreadable")


def test_html_main_text_and_wiki_markup(tmp_path):
    body = "Tea is an aromatic beverage prepared by pouring hot water over cured leaves. " * 4
    (tmp_path / "page.html").write_text(
        "<html><head><title>Tea</title><script>var x = 1;</script></head><body>"
        "<nav><a href='/'>Home</a> | <a href='/shop'>Shop</a></nav>"
        f"<article><h1>Tea</h1><p>{body}</p></article><footer>Copyright 2026</footer></body></html>"
    )
    (tmp_path / "tea.wiki").write_text(
        "'''Tea''' is an [[aromatic]] [[Drink|beverage]].<ref>{{cite web|url=x}}</ref>\n"
        "== History ==\n{{Infobox tea}}Tea originated in [[China]].\n[[Category:Drinks]]\n"
        '{| class="wikitable"\n|-\n! Year !! Tons\n|-\n| 2020 || 5\n|}'
    )
    records, problems = _split(list(collect.collect([str(tmp_path)])))
    assert not problems
    html, wiki = records
    assert body.strip() in html["text"] and "Home" not in html["text"]
    assert "Copyright" not in html["text"] and "var x" not in html["text"]
    assert wiki["text"] == "Tea is an aromatic beverage.\nHistory\nTea originated in China."


@pytest.mark.assets
def test_mediawiki_dump_articles():
    path = assets.gensim_test_data_path() / WIKI
    records = list(itertools.islice(collect.read_file(str(path)), 3))
    assert [r["title"] for r in records] == ["Anarchism", "Autism", "Albedo"]
    assert records[0]["text"].startswith("Anarchism is a political philosophy")
    for record in records:
        assert "[[" not in record["text"] and "{{" not in record["text"]
        assert "<ref" not in record["text"] and len(record["text"].split()) > 1000
    with bz2.open(path, "rt") as f:  # The dump's first page is a redirect: skipped.
        assert "<title>AccessibleComputing</title>" in f.read(5000)


def test_read_file_arguments():
    with pytest.raises(ValueError, match="text_unit"):
        list(collect.read_file("x.txt", text_unit="sentence"))
    assert collect.file_format("a/b.xml-p10p30.bz2") == (".xml", ".bz2")
    assert collect.file_format("a/b.JSONL") == (".jsonl", None)
