"""The Porter stemmer exactly as NLTK's `PorterStemmer()` (its default `NLTK_EXTENSIONS` mode).

`rouge-score` stems with that class, so ROUGE with stemming needs the same stems; this
~130-line copy of the rules avoids an `nltk` dependency. Steps follow Porter (1980) plus
NLTK's changes: a table of irregular forms, words of 1-2 letters left alone, `ies`/`ied`
-> `ie` in 4-letter words, `y` -> `i` only after a consonant that is not the first letter,
`alli` handled before the other step-2 rules, `bli` -> `ble`, `fulli` -> `ful`, `logi` ->
`log`, and `*o` true for a vowel-consonant word of two letters.
"""

import functools

_VOWELS = frozenset("aeiou")
_IRREGULAR = {
    "skies": "sky", "sky": "sky", "dying": "die", "lying": "lie", "tying": "tie",
    "news": "news", "innings": "inning", "inning": "inning", "outings": "outing",
    "outing": "outing", "cannings": "canning", "canning": "canning", "howe": "howe",
    "proceed": "proceed", "exceed": "exceed", "succeed": "succeed",
}  # fmt: skip


def _consonants(word: str) -> list[bool]:
    """Per letter: consonant? `y` is one at the start or after a vowel."""
    flags = []
    for i, char in enumerate(word):
        flags.append(char not in _VOWELS and (char != "y" or i == 0 or not flags[i - 1]))
    return flags


def _measure(stem: str) -> int:
    """Porter's m: the number of vowel-consonant sequences in `[C](VC)^m[V]`."""
    flags = _consonants(stem)
    return sum(1 for prev, cur in zip(flags, flags[1:], strict=False) if not prev and cur)


def _contains_vowel(stem: str) -> bool:
    return not all(_consonants(stem))


def _ends_double_consonant(word: str) -> bool:
    return len(word) >= 2 and word[-1] == word[-2] and _consonants(word)[-1]


def _ends_cvc(word: str) -> bool:
    """Porter's *o: ends consonant-vowel-consonant, the last not w, x or y."""
    if len(word) >= 3:
        c = _consonants(word)
        if c[-3] and not c[-2] and c[-1] and word[-1] not in "wxy":
            return True
    return len(word) == 2 and _consonants(word) == [False, True]


def _positive(stem: str) -> bool:
    return _measure(stem) > 0


def _above_one(stem: str) -> bool:
    return _measure(stem) > 1


def _apply(word: str, rules) -> str:
    """The first rule whose suffix ends `word` decides: replace if its condition holds."""
    for suffix, replacement, condition in rules:
        if word.endswith(suffix):
            stem = word[: len(word) - len(suffix)]
            return stem + replacement if condition is None or condition(stem) else word
    return word


_STEP1A = [("sses", "ss", None), ("ies", "i", None), ("ss", "ss", None), ("s", "", None)]
_STEP2 = [
    (suffix, replacement, _positive)
    for suffix, replacement in [
        ("ational", "ate"), ("tional", "tion"), ("enci", "ence"), ("anci", "ance"),
        ("izer", "ize"), ("bli", "ble"), ("alli", "al"), ("entli", "ent"), ("eli", "e"),
        ("ousli", "ous"), ("ization", "ize"), ("ation", "ate"), ("ator", "ate"),
        ("alism", "al"), ("iveness", "ive"), ("fulness", "ful"), ("ousness", "ous"),
        ("aliti", "al"), ("iviti", "ive"), ("biliti", "ble"), ("fulli", "ful"),
    ]
]  # fmt: skip
# NLTK keeps the `l` of `logi` in the stem it measures ("geologi" -> "geolog").
_STEP2.append(("logi", "log", lambda stem: _positive(stem + "l")))
_STEP3 = [
    (suffix, replacement, _positive)
    for suffix, replacement in [
        ("icate", "ic"), ("ative", ""), ("alize", "al"), ("iciti", "ic"), ("ical", "ic"),
        ("ful", ""), ("ness", ""),
    ]
]  # fmt: skip
_STEP4 = [
    (suffix, "", _above_one)
    for suffix in (
        "al", "ance", "ence", "er", "ic", "able", "ible", "ant", "ement", "ment", "ent",
    )
]  # fmt: skip
_STEP4.append(("ion", "", lambda stem: _above_one(stem) and stem[-1] in "st"))
_STEP4 += [(suffix, "", _above_one) for suffix in ("ou", "ism", "ate", "iti", "ous", "ive", "ize")]


def _step1b(word: str) -> str:
    if word.endswith("ied"):
        return word[:-3] + ("ie" if len(word) == 4 else "i")
    if word.endswith("eed"):
        return word[:-1] if _positive(word[:-3]) else word
    for suffix in ("ed", "ing"):
        if word.endswith(suffix) and _contains_vowel(word[: -len(suffix)]):
            stem = word[: -len(suffix)]
            break
    else:
        return word
    if stem.endswith(("at", "bl", "iz")):
        return stem + "e"
    if _ends_double_consonant(stem):
        return stem if stem[-1] in "lsz" else stem[:-1]
    return stem + "e" if _measure(stem) == 1 and _ends_cvc(stem) else stem


def _step2(word: str) -> str:
    if word.endswith("alli") and _positive(word[:-4]):
        return _step2(word[:-4] + "al")
    return _apply(word, _STEP2)


def _step5(word: str) -> str:
    if word.endswith("e"):
        m = _measure(word[:-1])
        if m > 1 or (m == 1 and not _ends_cvc(word[:-1])):
            word = word[:-1]
    if word.endswith("ll") and _above_one(word[:-1]):
        word = word[:-1]
    return word


@functools.lru_cache(maxsize=1 << 16)
def porter_stem(word: str) -> str:
    """Stem one word as `nltk.stem.PorterStemmer().stem(word)` does (lowercased result).

    Example:
    >>> [porter_stem(w) for w in ["running", "flies", "generalization", "dying", "happy"]]
    ['run', 'fli', 'gener', 'die', 'happi']
    """
    lowered = word.lower()
    if lowered in _IRREGULAR:
        return _IRREGULAR[lowered]
    if len(word) <= 2:  # NLTK measures the word before lowercasing
        return lowered
    word = lowered
    word = word[:-3] + "ie" if word.endswith("ies") and len(word) == 4 else _apply(word, _STEP1A)
    word = _step1b(word)
    if word.endswith("y") and len(word) > 2 and _consonants(word[:-1])[-1]:
        word = word[:-1] + "i"
    word = _step2(word)
    word = _apply(word, _STEP3)
    word = _apply(word, _STEP4)
    return _step5(word)
