"""pipelines.clean: real text survives (Lee news, Wikipedia, People's Daily), planted junk is
dropped with the reason of the rule that catches it, PII is scrubbed."""

import itertools
import re

import pytest

from pipelines import clean, collect
from tfllm import assets

pytestmark = pytest.mark.assets

WIKI = "enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"


@pytest.fixture(scope="module")
def lee():
    text = (assets.gensim_test_data_path() / "lee_background.cor").read_text()
    return [line.strip() for line in text.splitlines()]


@pytest.fixture(scope="module")
def article(lee):
    """A long real news article, several sentences, normalized."""
    return clean.normalize_text(max(lee[:50], key=len))


def _reason(text, **filters):
    return clean.clean_document(text, clean.CleanConfig.from_dict(filters))[1]


def test_real_english_text_is_kept(lee):
    reasons = [_reason(doc) for doc in lee]
    assert sum(r is None for r in reasons) >= 0.95 * len(lee), reasons
    pages = itertools.islice(collect.read_file(str(assets.gensim_test_data_path() / WIKI)), 6)
    articles = [p["text"] for p in pages]
    assert len(articles) == 6
    assert sum(_reason(a) is None for a in articles) >= 5


def test_chinese_is_measured_by_characters():
    lines = []
    with open(assets.peoples_daily_path(), encoding="utf-8") as f:
        for line in itertools.islice(f, 1000):
            tokens = [re.sub(r"/\w+$", "", t).lstrip("[").split("]")[0] for t in line.split()]
            if tokens:
                lines.append("".join(tokens))  # tags stripped: running text without spaces
    documents = ["\n".join(lines[i : i + 10]) for i in range(0, len(lines), 10)]
    # Word-based rules would drop all of them: there are almost no spaces.
    assert sum(len(d.split()) >= 50 for d in documents) == 0
    reasons = [_reason(d) for d in documents]
    assert sum(r is None for r in reasons) >= 0.85 * len(documents), reasons
    assert clean.detect_language(documents[0]) == "zh"


def test_planted_junk_is_dropped_with_its_reason(article, lee):
    lines = article.split(". ")
    cases = {
        "gopher_min_words": "Too short to be a document.",
        "c4_lorem_ipsum": article + " Lorem ipsum dolor sit amet.",
        "c4_curly_braces": article + " function() { return 1; }",
        "gopher_duplicate_lines": "\n".join([article] + ["Click here to subscribe now."] * 12),
        "gopher_symbol_word_ratio": article + "".join(f" #tag{i}" for i in range(80)),
        "gopher_bullet_lines": "\n".join(f"* {line}." for line in lines),
        "gopher_ellipsis_lines": "\n".join(f"{line}..." for line in lines),
        "gopher_stop_words": " ".join(w for w in article.split() if w.lower() not in
                                      ("the", "be", "to", "of", "and", "that", "have", "with")),
        "gopher_top_2gram": article + " buy now" * 150,
        "gopher_duplicate_5gram": article + (" " + " ".join(article.split()[:30])) * 2,
        "gopher_mean_word_length": " ".join(w[:2] for w in article.split()) + ".",
        "c4_min_sentences": " ".join(w.strip('.!?"') for w in article.split()[:80]) + ".",
        "language_de": "Das ist ein deutscher Satz über die Wirtschaft und Politik. " * 3,
    }  # fmt: skip
    for expected, text in cases.items():
        filters = {"languages": ["en"]} if expected.startswith("language") else {}
        assert _reason(text, **filters) == expected, expected
    # Each rule is a parameter: switched off, the same text passes that rule.
    assert _reason(cases["c4_lorem_ipsum"], c4_lorem_ipsum=False) is None
    assert _reason(cases["gopher_min_words"], gopher_min_words=None) != "gopher_min_words"


def test_c4_removes_bad_lines_and_fineweb_drops_short_line_lists(article):
    text = "\n".join([article, "Please enable Javascript to view this page.", "Menu", "Home"])
    cleaned = clean.clean_text(text)
    assert cleaned == article
    words = article.split()
    short = [" ".join(words[i : i + 4]).strip(".") + "." for i in range(0, len(words), 4)]
    listing = "\n".join([article, *short])
    assert _reason(listing, c4_min_words_per_line=None) == "fineweb_short_lines"


def test_pii_is_scrubbed():
    text = (
        "Mail john.doe@example.com or call +1 (555) 123-4567 / +44 20 7946 0958 / "
        "555.123.4567; hosts 192.168.0.1 and 2001:db8::1 at 12:30:45 on 2026-12-01, "
        "version 1.2.3, codes 0111 1011 123 and 1998-2001."
    )
    assert clean.scrub_pii(text) == (
        "Mail <EMAIL> or call <PHONE> / <PHONE> / <PHONE>; hosts <IP> and <IP> at 12:30:45 "
        "on 2026-12-01, version 1.2.3, codes 0111 1011 123 and 1998-2001."
    )


def test_normalize_text():
    raw = "Cafe\u0301\u200b  menu\x07\r\nexam-\nple\n\n\n\nend\t here  "
    assert clean.normalize_text(raw) == "Caf\u00e9 menu\nexample\n\nend here"


def test_clean_text_arguments():
    with pytest.raises(TypeError, match="Unknown clean filters"):
        clean.clean_text("text", gopher_min_word=3)
    with pytest.raises(ValueError, match="languages"):
        clean.CleanConfig(languages=("xx",))
    with pytest.raises(TypeError, match="str"):
        clean.clean_text(b"bytes")
    assert clean.clean_text("   ") is None


def _reference_ngram_reason(tokens, cjk, config):
    """Gopher's n-gram rules written plainly with tuples and dicts."""
    total = sum(map(len, tokens)) or 1
    scale = 2 if cjk else 1
    for n, limit in config.gopher_top_ngram_chars:
        counts = {}
        for i in range(len(tokens) - n * scale + 1):
            gram = tuple(tokens[i : i + n * scale])
            counts[gram] = counts.get(gram, 0) + 1
        if counts:
            best = max(counts.values())
            chars = max(sum(map(len, g)) for g, c in counts.items() if c == best)
            if best > 1 and best * chars / total > limit:
                return f"gopher_top_{n}gram"
    for n, limit in config.gopher_duplicate_ngram_chars:
        m, seen, covered = n * scale, {}, [False] * len(tokens)
        for i in range(len(tokens) - m + 1):
            gram = tuple(tokens[i : i + m])
            if gram in seen:  # both the first and the repeated occurrence
                for j in (*range(seen[gram], seen[gram] + m), *range(i, i + m)):
                    covered[j] = True
            else:
                seen[gram] = i
        if sum(len(t) for t, c in zip(tokens, covered, strict=True) if c) / total > limit:
            return f"gopher_duplicate_{n}gram"
    return None


def test_ngram_rules_match_a_plain_reference(lee):
    config = clean.CleanConfig()
    texts = [doc for doc in lee[:60]]
    texts += [
        doc + (" " + " ".join(doc.split()[:k])) * 2
        for doc, k in zip(lee[:40], range(5, 45), strict=True)
    ]
    texts += [" ".join(doc.split()[:20]) * 4 for doc in lee[:10]]
    reasons = set()
    for text in texts:
        tokens = clean.words(text, False)
        expected = _reference_ngram_reason(tokens, False, config)
        assert clean._ngram_reason(tokens, False, config) == expected
        reasons.add(expected)
    assert len(reasons) >= 4  # kept, and several different rules fired
    chinese = "解放思想、实事求是，是邓小平理论的精髓。" * 3 + "我们要更好地坚持思想路线。"
    tokens = clean.words(chinese, True)
    assert clean._ngram_reason(tokens, True, config) == _reference_ngram_reason(
        tokens, True, config
    )
