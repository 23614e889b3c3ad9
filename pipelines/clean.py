"""Cleaning: normalization, PII scrubbing, language identification, quality filters.

Every filter is a `CleanConfig` field holding its published threshold (set it to `None`
or `False` to switch the rule off); a dropped document carries the name of the first
rule that dropped it. Rules run in FineWeb's order: Gopher repetition, Gopher quality,
C4 (which also removes lines), FineWeb.

- Gopher (Rae et al. 2021, app. A): 50..100k words, mean word length 3..10, symbol/word
  <= 0.1, <= 90% bullet lines, <= 30% ellipsis lines, >= 80% words with a letter, >= 2
  English stop words; duplicate lines/paragraphs <= 30% (count) and <= 20% (chars),
  top 2/3/4-gram char share <= 0.20/0.18/0.16, duplicated 5..10-gram share 0.15..0.10.
- C4 (Raffel et al. 2020): lines need terminal punctuation and >= 5 words, no
  "javascript" or cookie/policy lines; pages need >= 3 sentences, no "lorem ipsum", no "{".
- FineWeb (Penedo et al. 2024): >= 12% lines end in punctuation, <= 67% lines shorter
  than 30 chars, <= 1% chars in duplicated lines, <= 0.3 newlines per word.

Languages written without spaces (Chinese, Japanese) count every CJK/kana character as a
word, skip the mean-word-length rule, use character 2n-grams for the word n-gram rules
and CJK sentence punctuation. The stop-word rule
applies to English only. Language identification uses `lingua` (models ship in the wheel).

Example:
    >>> clean_text("Too short.") is None
    True
"""

import dataclasses
import functools
import re
import unicodedata
from dataclasses import dataclass

import numpy as np

_CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
_CJK_WORDS = re.compile(rf"[{_CJK}]|[^\s{_CJK}]+")
_CJK_CHAR = re.compile(rf"[{_CJK}]")
_ALPHA_WORD = re.compile(r"(?<!\S)\S*?[^\W\d_]\S*")  # a whitespace word holding a letter
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u200b\u200e\u200f\ufeff]")
_HSPACE = re.compile(r"[^\S\n]+")
_HYPHEN_BREAK = re.compile(r"(\w)-\n(\w)")
_BLANK_LINES = re.compile(r"\n{3,}")
_EMAIL = re.compile(r"(?<![\w.+-])[\w.+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}\b")
_IPV4 = re.compile(
    r"(?<![\w.])(?:(?:25[0-5]|2[0-4]\d|1?\d?\d)\.){3}(?:25[0-5]|2[0-4]\d|1?\d?\d)(?![\w.])"
)
_IPV6 = re.compile(
    r"(?<![\w:])(?:(?:[0-9A-Fa-f]{1,4}:){7}[0-9A-Fa-f]{1,4}"
    r"|(?:[0-9A-Fa-f]{1,4}:){1,6}(?::[0-9A-Fa-f]{1,4}){1,6})(?![\w:])"
)
# International (+cc ...), area code in parentheses, or 3-3-4 digits joined by - or .; bare
# space-separated digit groups (tables, binary codes) are too ambiguous to call phones.
_PHONE = re.compile(
    r"(?<![\w+])(?:\+\d{1,3}[ .-]?(?:\(\d{1,4}\)[ .-]?)?\d{1,4}(?:[ .-]\d{2,4}){1,3}"
    r"|\(\d{2,4}\)[ .-]?\d{3,4}[ .-]\d{3,4}|\d{3}([.-])\d{3}\1\d{4})(?![\w-])"
)
_SENTENCE_END = re.compile(r"[.!?。！？]+[\"'”’」』)]*(?:\s|$)")
_TERMINAL = (".", "!", "?", '"', "。", "！", "？", "”", "」", "』")
_FINEWEB_PUNCT = (*_TERMINAL, "'", "…", ";", ":", "；", "：")
_BULLETS = ("•", "●", "○", "■", "□", "▪", "▫", "*", "-", "–", "‣", "⁃")
_STOP_WORDS = frozenset({"the", "be", "to", "of", "and", "that", "have", "with"})
_POLICY = ("terms of use", "privacy policy", "cookie policy", "uses cookies", "use cookies")
_MIX = np.random.default_rng(7).integers(1, 2**63, size=32, dtype=np.uint64) | np.uint64(1)
DETECTABLE = ("ar", "de", "en", "es", "fr", "hi", "it", "ja", "ko", "nl", "pl", "pt", "ru",
              "sv", "tr", "zh")  # fmt: skip


@dataclass(frozen=True)
class CleanConfig:
    """Cleaning switches and thresholds (`None`/`False` turns a rule off).

    Example:
        >>> config = CleanConfig(languages=("en",), c4_min_sentences=None)
        >>> config.gopher_min_words, config.c4_min_sentences
        (50, None)
    """

    scrub_pii: bool = True
    languages: tuple[str, ...] | None = None  # ISO 639-1 codes to keep; None keeps all
    detect_language: bool = True
    gopher_min_words: int | None = 50
    gopher_max_words: int | None = 100_000
    gopher_mean_word_length: tuple[float, float] | None = (3, 10)
    gopher_max_symbol_word_ratio: float | None = 0.1
    gopher_max_bullet_lines: float | None = 0.9
    gopher_max_ellipsis_lines: float | None = 0.3
    gopher_min_alpha_words: float | None = 0.8
    gopher_min_stop_words: int | None = 2
    gopher_max_duplicate_lines: float | None = 0.3
    gopher_max_duplicate_paragraphs: float | None = 0.3
    gopher_max_duplicate_line_chars: float | None = 0.2
    gopher_max_duplicate_paragraph_chars: float | None = 0.2
    gopher_top_ngram_chars: tuple[tuple[int, float], ...] | None = ((2, 0.2), (3, 0.18), (4, 0.16))
    gopher_duplicate_ngram_chars: tuple[tuple[int, float], ...] | None = (
        (5, 0.15), (6, 0.14), (7, 0.13), (8, 0.12), (9, 0.11), (10, 0.10))  # fmt: skip
    c4_terminal_punctuation: bool = True
    c4_min_words_per_line: int | None = 5
    c4_min_sentences: int | None = 3
    c4_lorem_ipsum: bool = True
    c4_curly_braces: bool = True
    c4_javascript: bool = True
    c4_policy: bool = True
    fineweb_min_punctuated_lines: float | None = 0.12
    fineweb_max_short_lines: float | None = 0.67
    fineweb_short_line_chars: int = 30
    fineweb_max_duplicate_line_chars: float | None = 0.01
    fineweb_max_newlines_per_word: float | None = 0.3

    def __post_init__(self):
        unknown = set(self.languages or ()) - set(DETECTABLE)
        if unknown:
            raise ValueError(f"`languages` must be among {DETECTABLE}. Received: {self.languages}")

    @classmethod
    def from_dict(cls, values: dict) -> "CleanConfig":
        """Build from JSON-style values (lists become tuples); unknown keys raise `TypeError`."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(values) - names
        if unknown:
            raise TypeError(f"Unknown clean filters: {sorted(unknown)}. Known: {sorted(names)}")
        tupled = {k: _tuples(v) for k, v in values.items()}
        return cls(**tupled)


def _tuples(value):
    return tuple(_tuples(v) for v in value) if isinstance(value, list) else value


def normalize_text(text: str) -> str:
    """NFC, control characters removed, spaces collapsed, hyphenated line breaks joined."""
    text = unicodedata.normalize("NFC", text).replace("\r\n", "\n").replace("\r", "\n")
    text = _CONTROL.sub("", text.replace("\t", " "))
    text = _HYPHEN_BREAK.sub(r"\1\2", text)
    lines = [_HSPACE.sub(" ", line).strip() for line in text.split("\n")]
    return _BLANK_LINES.sub("\n\n", "\n".join(lines)).strip()


def scrub_pii(text: str) -> str:
    """Replaces emails, IP addresses and phone numbers with `<EMAIL>`, `<IP>`, `<PHONE>`."""
    text = _EMAIL.sub("<EMAIL>", text)
    text = _IPV6.sub("<IP>", _IPV4.sub("<IP>", text))
    return _PHONE.sub("<PHONE>", text)


@functools.cache
def _detector():
    from lingua import IsoCode639_1, LanguageDetectorBuilder

    codes = [getattr(IsoCode639_1, code.upper()) for code in DETECTABLE]
    # Low accuracy mode (trigrams only) is 3x faster and reliable beyond ~100 characters.
    return LanguageDetectorBuilder.from_iso_codes_639_1(*codes).with_low_accuracy_mode().build()


def detect_language(text: str) -> str | None:
    """ISO 639-1 code of the language of `text` (first 500 chars), among `DETECTABLE`."""
    language = _detector().detect_language_of(text[:500])
    return language.iso_code_639_1.name.lower() if language is not None else None


def is_cjk(text: str) -> bool:
    """Whether over 30% of the non-space characters are CJK ideographs or kana."""
    chars = len(text) - text.count(" ") - text.count("\n")
    return chars > 0 and len(_CJK_CHAR.findall(text)) > 0.3 * chars


def words(text: str, cjk: bool) -> list[str]:
    """Whitespace words, or for `cjk` text every CJK character as a word of its own."""
    return _CJK_WORDS.findall(text) if cjk else text.split()


def _ngram_hashes(ids: np.ndarray, n: int) -> np.ndarray:
    """64-bit hash of each token `n`-gram, from integer token ids: `(len(ids) - n + 1,)`."""
    count = ids.size - n + 1
    hashes = np.zeros(count, dtype=np.uint64)
    for i in range(n):  # Wraps mod 2^64; each position has its own odd multiplier.
        hashes += (ids[i : i + count] + np.uint64(1)) * _MIX[i]
    return hashes


def _ngram_reason(tokens: list[str], cjk: bool, config: CleanConfig) -> str | None:
    """Gopher's top n-gram and duplicated n-gram character shares, vectorized."""
    vocabulary: dict[str, int] = {}
    ids = np.array([vocabulary.setdefault(t, len(vocabulary)) for t in tokens], dtype=np.uint64)
    lengths = np.array([len(t) for t in tokens], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)])  # chars before token j
    total = max(int(offsets[-1]), 1)
    scale = 2 if cjk else 1  # A Chinese word is ~2 characters: n words ~ 2n characters.
    for n, limit in config.gopher_top_ngram_chars or ():
        if ids.size < n * scale:
            continue
        _, first, counts = np.unique(
            _ngram_hashes(ids, n * scale), return_index=True, return_counts=True
        )
        top = np.flatnonzero(counts == counts.max())  # ties: the longest n-gram counts
        chars = (offsets[first[top] + n * scale] - offsets[first[top]]).max()
        if counts.max() > 1 and counts.max() * chars / total > limit:
            return f"gopher_top_{n}gram"
    for n, limit in config.gopher_duplicate_ngram_chars or ():
        m = n * scale
        if ids.size < m:
            continue
        _, inverse, counts = np.unique(
            _ngram_hashes(ids, m), return_inverse=True, return_counts=True
        )
        starts = np.concatenate([[0], np.cumsum(counts[inverse] > 1)])
        j = np.arange(ids.size)  # token j is covered by a repeated n-gram starting in [j-m+1, j]
        low, high = np.maximum(j - m + 1, 0), np.minimum(j, ids.size - m) + 1
        covered = starts[high] - starts[low] > 0
        if lengths[covered].sum() / total > limit:
            return f"gopher_duplicate_{n}gram"
    return None


def _duplicate_share(parts: list[str]) -> tuple[float, float]:
    """Fraction of `parts` that repeat an earlier one, and the fraction of chars they hold."""
    seen, dup, dup_chars = set(), 0, 0
    for part in parts:
        if part in seen:
            dup, dup_chars = dup + 1, dup_chars + len(part)
        seen.add(part)
    return dup / max(len(parts), 1), dup_chars / max(sum(map(len, parts)), 1)


def _gopher_repetition(text: str, tokens: list[str], cjk: bool, config: CleanConfig) -> str | None:
    lines = [line for line in text.split("\n") if line.strip()]
    paragraphs = [p for p in re.split(r"\n\s*\n", text) if p.strip()]
    line_dup, line_chars = _duplicate_share(lines)
    para_dup, para_chars = _duplicate_share(paragraphs)
    checks = (
        ("gopher_duplicate_lines", line_dup, config.gopher_max_duplicate_lines),
        ("gopher_duplicate_paragraphs", para_dup, config.gopher_max_duplicate_paragraphs),
        ("gopher_duplicate_line_chars", line_chars, config.gopher_max_duplicate_line_chars),
        ("gopher_duplicate_paragraph_chars", para_chars,
         config.gopher_max_duplicate_paragraph_chars),
    )  # fmt: skip
    for name, value, limit in checks:
        if limit is not None and value > limit:
            return name
    return _ngram_reason(tokens, cjk, config)


def _gopher_quality(
    text: str, tokens: list[str], cjk: bool, language: str | None, config: CleanConfig
) -> str | None:
    n = len(tokens)
    if _below(n, config.gopher_min_words):
        return "gopher_min_words"
    if _above(n, config.gopher_max_words):
        return "gopher_max_words"
    if config.gopher_mean_word_length is not None and not cjk:
        low, high = config.gopher_mean_word_length
        if not low <= sum(map(len, tokens)) / n <= high:
            return "gopher_mean_word_length"
    symbols = text.count("#") + text.count("...") + text.count("…")
    if _above(symbols / n, config.gopher_max_symbol_word_ratio):
        return "gopher_symbol_word_ratio"
    lines = [line for line in text.split("\n") if line.strip()]
    bullets = sum(line.lstrip().startswith(_BULLETS) for line in lines) / max(len(lines), 1)
    if _above(bullets, config.gopher_max_bullet_lines):
        return "gopher_bullet_lines"
    ellipsis = sum(line.rstrip().endswith(("...", "…")) for line in lines) / max(len(lines), 1)
    if _above(ellipsis, config.gopher_max_ellipsis_lines):
        return "gopher_ellipsis_lines"
    if cjk:
        alpha = sum(any(c.isalpha() for c in t) for t in tokens) / n
    else:  # Whitespace words holding a letter, counted by one regex pass.
        alpha = len(_ALPHA_WORD.findall(text)) / n
    if _below(alpha, config.gopher_min_alpha_words):
        return "gopher_alpha_words"
    english = language == "en" or (language is None and not cjk)
    stop_words = sum(t.lower() in _STOP_WORDS for t in tokens) if english else None
    if english and _below(stop_words, config.gopher_min_stop_words):
        return "gopher_stop_words"
    return None


def _c4(text: str, cjk: bool, config: CleanConfig) -> tuple[str, str | None]:
    """C4's page rules and line removals: `(kept text, drop reason or None)`."""
    lower = text.lower()
    if config.c4_lorem_ipsum and "lorem ipsum" in lower:
        return text, "c4_lorem_ipsum"
    if config.c4_curly_braces and "{" in text:
        return text, "c4_curly_braces"
    kept = []
    for line in text.split("\n"):
        stripped, low = line.strip(), line.lower()
        if not stripped:
            kept.append("")
            continue
        if (
            (config.c4_terminal_punctuation and not stripped.endswith(_TERMINAL))
            or _below(len(words(stripped, cjk)), config.c4_min_words_per_line)
            or (config.c4_javascript and "javascript" in low)
            or (config.c4_policy and any(p in low for p in _POLICY))
        ):
            continue
        kept.append(stripped)
    text = _BLANK_LINES.sub("\n\n", "\n".join(kept)).strip()
    if not text:
        return text, "c4_no_lines"
    if _below(len(_SENTENCE_END.findall(text)), config.c4_min_sentences):
        return text, "c4_min_sentences"
    return text, None


def _fineweb(text: str, tokens: list[str], config: CleanConfig) -> str | None:
    lines = [line for line in text.split("\n") if line.strip()]
    if not lines:
        return "fineweb_no_lines"
    punct = sum(line.rstrip().endswith(_FINEWEB_PUNCT) for line in lines) / len(lines)
    if _below(punct, config.fineweb_min_punctuated_lines):
        return "fineweb_punctuated_lines"
    short = sum(len(line) <= config.fineweb_short_line_chars for line in lines) / len(lines)
    if _above(short, config.fineweb_max_short_lines):
        return "fineweb_short_lines"
    if _above(_duplicate_share(lines)[1], config.fineweb_max_duplicate_line_chars):
        return "fineweb_duplicate_line_chars"
    if _above(text.count("\n") / max(len(tokens), 1), config.fineweb_max_newlines_per_word):
        return "fineweb_newlines_per_word"
    return None


def _above(value: float, limit: float | None) -> bool:
    return limit is not None and value > limit


def _below(value: float, limit: float | None) -> bool:
    return limit is not None and value < limit


def clean_document(text: str, config: CleanConfig) -> tuple[str, str | None, str | None]:
    """Clean one document: `(cleaned text, drop reason or None, language code or None)`."""
    if not isinstance(text, str):
        raise TypeError(f"`text` must be a str. Received: {type(text).__name__}")
    text = normalize_text(text)
    if not text:
        return text, "empty", None
    if config.scrub_pii:
        text = scrub_pii(text)
    language = detect_language(text) if config.detect_language else None
    if config.languages is not None and language not in config.languages:
        return text, f"language_{language}", language
    cjk = language in ("zh", "ja") if language else is_cjk(text)
    tokens = words(text, cjk)
    reason = _gopher_repetition(text, tokens, cjk, config) or _gopher_quality(
        text, tokens, cjk, language, config
    )
    if reason:
        return text, reason, language
    text, reason = _c4(text, cjk, config)
    if reason:
        return text, reason, language
    return text, _fineweb(text, words(text, cjk), config), language


def clean_text(text: str, **filters) -> str | None:
    """The cleaned `text`, or `None` if a filter drops it; `filters` are `CleanConfig` fields.

    Example:
        >>> article = (
        ...     "Write to jane@example.com with questions. The city council met on Monday to "
        ...     "discuss the new budget for schools. Teachers asked for more money to repair old "
        ...     "buildings and buy books. The mayor said that the plan would be ready by the end "
        ...     "of the month. Several parents spoke for longer library hours. A vote is "
        ...     "expected next year."
        ... )
        >>> clean_text(article, languages=("en",), c4_min_sentences=5)
        'Write to <EMAIL> with questions. The city council met on Monday to discuss ...'
        >>> clean_text(article, c4_min_sentences=10) is None  # fewer sentences than that
        True
    """
    cleaned, reason, _ = clean_document(text, CleanConfig.from_dict(filters))
    return None if reason else cleaned


def clean_record(record: dict, config: CleanConfig) -> tuple[dict, str | None]:
    """`(record with cleaned text and "language", drop reason or None)`."""
    text, reason, language = clean_document(record.get("text", ""), config)
    return {**record, "text": text, "language": language}, reason
