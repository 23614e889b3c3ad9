r"""Collection: trees of raw files -> records `{"id", "text", "source"}` plus read problems.

Formats by suffix (optionally compressed: `.gz`, `.bz2`, `.xz`): `.txt` and `.md` (one
document per file, or per line / per blank-line paragraph with `text_unit`), `.jsonl` (a `text_key`
field per line), `.csv` (a `text_key` column), `.parquet` (a `text_key` column), `.html`
/`.htm` (main text extracted with trafilatura), `.xml` MediaWiki dumps (article pages,
namespace 0, redirects skipped, wiki markup stripped with mwparserfromhell) and `.wiki`
files of wiki markup.

Readers never raise on bad input: an unreadable file, an undecodable line, a malformed
JSON line or an empty document becomes a `Problem(file, line, reason)` and every other
record of the file is still read.

Example:
    >>> from pathlib import Path
    >>> _ = Path("a.jsonl").write_text('{"text": "A first document."}\n{not json\n')
    >>> for item in read_file("a.jsonl"):
    ...     print(item)  # a record dict, or a Problem
    {'text': 'A first document.', 'id': 'a.jsonl:1', 'source': 'a.jsonl'}
    Problem(file='a.jsonl', line=2, reason='malformed JSON: ...')
"""

import bz2
import csv
import gzip
import io
import json
import lzma
import os
import re
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

FORMATS = (".txt", ".md", ".jsonl", ".csv", ".parquet", ".html", ".htm", ".xml", ".wiki")
_OPENERS = {".gz": gzip.open, ".bz2": bz2.open, ".xz": lzma.open}
_WIKI_DROP = re.compile(
    r"<ref[^>]*/>|<ref[^>]*>.*?</ref>|<!--.*?-->|^\{\|.*?^\|\}"  # refs, comments, tables
    r"|\[\[(?:File|Image|Category|Media):[^\[\]]*(?:\[\[[^\[\]]*\]\][^\[\]]*)*\]\]",
    re.DOTALL | re.IGNORECASE | re.MULTILINE,
)


class Problem(NamedTuple):
    """A record that could not be read: `line` is 1-based (0: the whole file)."""

    file: str
    line: int
    reason: str

    def to_dict(self) -> dict:
        return {"file": self.file, "line": self.line, "reason": self.reason}


def file_format(path: str) -> tuple[str, str | None]:
    """`(format suffix, compression suffix or None)` of `path`, e.g. `(".xml", ".bz2")`."""
    suffixes = [s.lower() for s in Path(path).suffixes]
    compression = suffixes.pop() if suffixes and suffixes[-1] in _OPENERS else None
    if any(s.startswith(".xml") for s in suffixes):  # enwiki-...-pages-articles1.xml-p10p30302
        return ".xml", compression
    return (suffixes[-1] if suffixes else ""), compression


def find_files(roots: list[str]) -> list[str]:
    """Sorted files under `roots` (files or folders, recursively) with a known format."""
    found = set()
    for root in roots:
        paths = [Path(root)] if Path(root).is_file() else Path(root).rglob("*")
        found |= {str(p) for p in paths if p.is_file() and file_format(str(p))[0] in FORMATS}
    return sorted(found)


def _open_binary(path: str):
    _, compression = file_format(path)
    return _OPENERS[compression](path, "rb") if compression else open(path, "rb")


def _record(path: str, key: str, text: str, **extra) -> dict:
    return {"id": f"{path}:{key}", "text": text, "source": path, **extra}


def _decoded_lines(path: str) -> Iterator[tuple[int, str | Problem]]:
    """`(line number, text)` of each UTF-8 line; a `Problem` for lines that do not decode."""
    with _open_binary(path) as f:
        for number, raw in enumerate(f, start=1):
            try:
                yield number, raw.decode("utf-8")
            except UnicodeDecodeError as error:
                yield number, Problem(path, number, f"bad encoding: {error.reason}")


def _read_txt(path: str, text_unit: str) -> Iterator[dict | Problem]:
    lines, found = [], 0
    for number, line in _decoded_lines(path):
        if isinstance(line, Problem):
            yield line
        elif text_unit != "line":
            lines.append(line)
        elif line.strip():  # Line mode streams: a large file is never held in memory.
            found += 1
            yield _record(path, str(number), line.strip())
    if text_unit != "line":
        text = "".join(lines)
        chunks = re.split(r"\n[ \t\r]*\n", text) if text_unit == "paragraph" else [text]
        for index, chunk in enumerate(chunks):
            if chunk.strip():
                found += 1
                yield _record(path, str(index), chunk.strip())
    if not found:
        yield Problem(path, 0, "empty document")


def _read_jsonl(path: str, text_key: str) -> Iterator[dict | Problem]:
    for number, line in _decoded_lines(path):
        if isinstance(line, Problem):
            yield line
            continue
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as error:
            yield Problem(path, number, f"malformed JSON: {error.msg}")
            continue
        text = obj.get(text_key) if isinstance(obj, dict) else None
        if not isinstance(text, str) or not text.strip():
            yield Problem(path, number, f"missing or empty {text_key!r}")
            continue
        yield {**obj, "id": str(obj.get("id", f"{path}:{number}")), "text": text,
               "source": obj.get("source", path)}  # fmt: skip


def _read_csv(path: str, text_key: str) -> Iterator[dict | Problem]:
    with _open_binary(path) as raw:
        reader = csv.DictReader(io.TextIOWrapper(raw, encoding="utf-8", newline=""))
        if reader.fieldnames is None or text_key not in reader.fieldnames:
            yield Problem(path, 1, f"no {text_key!r} column")
            return
        for row in reader:
            text = row.get(text_key)
            if not text or not text.strip():
                yield Problem(path, reader.line_num, f"missing or empty {text_key!r}")
            else:
                yield _record(path, str(reader.line_num), text)


def _read_parquet(path: str, text_key: str) -> Iterator[dict | Problem]:
    import pyarrow.parquet as pq

    table = pq.ParquetFile(path)
    if text_key not in table.schema_arrow.names:
        yield Problem(path, 0, f"no {text_key!r} column")
        return
    row = 0
    for batch in table.iter_batches(columns=[text_key]):
        for text in batch.column(0).to_pylist():
            row += 1
            if not isinstance(text, str) or not text.strip():
                yield Problem(path, row, f"missing or empty {text_key!r}")
            else:
                yield _record(path, str(row), text)


def _read_html(path: str) -> Iterator[dict | Problem]:
    import trafilatura

    with _open_binary(path) as f:
        html = f.read().decode("utf-8", errors="replace")
    text = trafilatura.extract(html, include_comments=False, include_tables=False)
    if text and text.strip():
        yield _record(path, "0", text)
    else:
        yield Problem(path, 0, "no main text in HTML")


def wiki_to_text(markup: str) -> str:
    """Article text of MediaWiki markup: references, files, categories and templates removed.

    Example:
        >>> wiki_to_text("'''Tea''' is a [[drink|beverage]].<ref>x</ref>")
        'Tea is a beverage.'
    """
    import mwparserfromhell

    text = mwparserfromhell.parse(_WIKI_DROP.sub("", markup)).strip_code(normalize=True)
    lines = [re.sub(r"[ \t]+", " ", line).strip() for line in text.split("\n")]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


def _read_wiki(path: str) -> Iterator[dict | Problem]:
    with _open_binary(path) as f:
        markup = f.read().decode("utf-8", errors="replace")
    text = wiki_to_text(markup)
    yield _record(path, "0", text) if text else Problem(path, 0, "empty document")


def _read_mediawiki(path: str) -> Iterator[dict | Problem]:
    with _open_binary(path) as f:
        pages = 0
        for _, element in ET.iterparse(f, events=("end",)):
            if not element.tag.endswith("}page") and element.tag != "page":
                continue
            pages += 1
            fields = {child.tag.rsplit("}", 1)[-1]: child for child in element.iter()}
            title = (fields["title"].text or "") if "title" in fields else ""
            text_field = fields.get("text")
            markup = text_field.text if text_field is not None else None
            if (
                fields.get("ns") is not None
                and fields["ns"].text == "0"
                and "redirect" not in fields
            ):
                text = wiki_to_text(markup or "")
                if text:
                    yield _record(path, title, text, title=title)
                else:
                    yield Problem(path, pages, f"empty article {title!r}")
            element.clear()  # Dumps are large: keep memory flat.


def read_file(
    path: str, text_key: str = "text", text_unit: str = "file"
) -> Iterator[dict | Problem]:
    r"""Records of one file, in order, with a `Problem` for whatever could not be read.

    Args:
        path: A file in one of `FORMATS`, optionally compressed.
        text_key: Field or column holding the text (JSONL, CSV, Parquet).
        text_unit: For `.txt`: `"file"`, `"paragraph"` (blank-line separated) or `"line"`.

    Example:
        >>> import bz2
        >>> from pathlib import Path
        >>> _ = Path("notes.txt.bz2").write_bytes(bz2.compress(b"One.\n\nTwo.\n"))
        >>> records = list(read_file("notes.txt.bz2", text_unit="paragraph"))
        >>> [(r["id"], r["text"]) for r in records if isinstance(r, dict)]
        [('notes.txt.bz2:0', 'One.'), ('notes.txt.bz2:1', 'Two.')]
    """
    if text_unit not in ("file", "paragraph", "line"):
        raise ValueError(f"`text_unit` must be file, paragraph or line. Received: {text_unit!r}")
    suffix, _ = file_format(path)
    readers = {
        ".txt": lambda: _read_txt(path, text_unit),
        ".md": lambda: _read_txt(path, text_unit),  # Markdown: plain text, markup kept
        ".jsonl": lambda: _read_jsonl(path, text_key),
        ".csv": lambda: _read_csv(path, text_key),
        ".parquet": lambda: _read_parquet(path, text_key),
        ".html": lambda: _read_html(path),
        ".htm": lambda: _read_html(path),
        ".xml": lambda: _read_mediawiki(path),
        ".wiki": lambda: _read_wiki(path),
    }
    if suffix not in readers:
        yield Problem(path, 0, f"unknown format {suffix!r}")
        return
    try:
        yield from readers[suffix]()
    except (OSError, EOFError, lzma.LZMAError, ET.ParseError, csv.Error, ValueError) as error:
        # Whatever was yielded before the failure is kept; the rest of the file is reported.
        yield Problem(path, 0, f"unreadable: {type(error).__name__}: {error}")


def collect(roots: list[str], **options) -> Iterator[dict | Problem]:
    """`read_file` over every file of `find_files(roots)`; `options` go to `read_file`."""
    for path in find_files(roots):
        if not os.access(path, os.R_OK):
            yield Problem(path, 0, "unreadable: permission denied")
            continue
        yield from read_file(path, **options)
