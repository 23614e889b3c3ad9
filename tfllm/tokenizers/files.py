"""Saving a tokenizer's files into a folder, and loading any kind back from one.

A folder holds Hugging Face vocabulary files (`vocab.txt`; `vocab.json` + `merges.txt`;
a SentencePiece `*.model`) or a Hugging Face `tokenizer.json`. `save_tokenizer` adds
`keras_tokenizer.json`: the tokenizer's Keras config with file names in place of its
vocabulary, so settings that the vocabulary files lack (casing, special tokens) round trip.
"""

import json
from pathlib import Path

import keras

from tfllm.tokenizers.base import Tokenizer
from tfllm.tokenizers.byte_pair import BytePairTokenizer
from tfllm.tokenizers.sentencepiece import SentencePieceTokenizer
from tfllm.tokenizers.training import write_atomically
from tfllm.tokenizers.wordpiece import WordPieceTokenizer

KINDS = {
    "wordpiece": WordPieceTokenizer,
    "bpe": BytePairTokenizer,
    "sentencepiece": SentencePieceTokenizer,
}
CONFIG_FILE = "keras_tokenizer.json"
# Constructor arguments stored as files: `{kind: {argument: file name}}`.
FILE_ARGUMENTS = {
    "wordpiece": {"vocabulary": "vocab.txt"},
    "bpe": {"vocabulary": "vocab.json", "merges": "merges.txt"},
    "sentencepiece": {"proto": "spm.model"},
}


def _kind(tokenizer) -> str:
    for kind, cls in KINDS.items():
        if isinstance(tokenizer, cls):
            return kind
    raise TypeError(f"`tokenizer` must be a tfllm tokenizer. Received: {type(tokenizer).__name__}")


def save_tokenizer(tokenizer: Tokenizer, directory) -> list[Path]:
    """Writes the files of `tokenizer` (the Hugging Face names) atomically; returns them.

    WordPiece: `vocab.txt`; byte-level BPE: `vocab.json` + `merges.txt`; SentencePiece:
    `spm.model`; each with `keras_tokenizer.json` (the rest of its config).

    Example:
    >>> files = save_tokenizer(WordPieceTokenizer(["[UNK]", "a"], lowercase=False), "tok")
    >>> sorted(f.name for f in files)
    ['keras_tokenizer.json', 'vocab.txt']
    >>> load_tokenizer("tok").lowercase
    False
    """
    kind = _kind(tokenizer)
    if kind == "wordpiece":
        files = {"vocab.txt": ("\n".join(tokenizer.vocabulary) + "\n").encode()}
    elif kind == "bpe":
        files = {
            "vocab.json": json.dumps(
                tokenizer.get_config()["vocabulary"], ensure_ascii=False
            ).encode(),
            "merges.txt": ("#version: 0.2\n" + "\n".join(tokenizer.merges) + "\n").encode(),
        }
    else:
        files = {"spm.model": tokenizer.proto}
    config = keras.saving.serialize_keras_object(tokenizer)
    config["config"].update(FILE_ARGUMENTS[kind])
    files[CONFIG_FILE] = json.dumps(config, indent=2).encode()
    write_atomically(directory, files)
    return [Path(directory) / name for name in files]


def load_tokenizer(directory, kind: str | None = None, **kwargs) -> Tokenizer:
    """Loads the tokenizer whose files are in `directory` (`kind` is guessed from them).

    Looked for in this order: `keras_tokenizer.json` (from `save_tokenizer`), `vocab.txt`
    (casing from a Hugging Face `tokenizer_config.json` beside it), `vocab.json` +
    `merges.txt`, one `*.model`, a Hugging Face `tokenizer.json`. `kwargs` go to the
    tokenizer (e.g. `lowercase=False` for a cased WordPiece).
    """
    folder = Path(directory)
    if not folder.is_dir():
        raise ValueError(f"`directory` {str(directory)!r} is not a folder.")
    if kind is not None and kind not in KINDS:
        raise ValueError(f"`kind` must be one of {tuple(KINDS)}. Received: {kind!r}")
    present = {p.name for p in folder.iterdir()}
    if CONFIG_FILE in present:
        return _from_keras_config(folder, kind, kwargs)
    if kind is None:
        if "vocab.txt" in present:
            kind = "wordpiece"
        elif {"vocab.json", "merges.txt"} <= present:
            kind = "bpe"
        elif any(name.endswith(".model") for name in present):
            kind = "sentencepiece"
        elif "tokenizer.json" in present:
            return tokenizer_from_json(folder / "tokenizer.json", **kwargs)
        else:
            raise ValueError(
                f"`directory` {str(directory)!r} holds no {CONFIG_FILE}, vocab.txt, "
                f"vocab.json + merges.txt, *.model or tokenizer.json file. "
                f"Found: {sorted(present)}"
            )
    if kind == "wordpiece":
        return WordPieceTokenizer.from_huggingface(folder, **kwargs)
    if kind == "bpe":
        return BytePairTokenizer(folder / "vocab.json", folder / "merges.txt", **kwargs)
    models = sorted(folder.glob("*.model"))
    if len(models) != 1:
        raise ValueError(
            f"`directory` {str(directory)!r} must hold one *.model file. "
            f"Found: {[m.name for m in models]}"
        )
    return SentencePieceTokenizer(models[0], **kwargs)


def _from_keras_config(folder: Path, kind: str | None, kwargs: dict) -> Tokenizer:
    config = json.loads((folder / CONFIG_FILE).read_text(encoding="utf-8"))
    saved = next((k for k, cls in KINDS.items() if cls.__name__ == config.get("class_name")), None)
    if saved is None or kind not in (None, saved):
        raise ValueError(
            f"`kind` is {kind!r} but {folder / CONFIG_FILE} holds a "
            f"{config.get('class_name')!r} (one of {[c.__name__ for c in KINDS.values()]})."
        )
    arguments = {arg: str(folder / name) for arg, name in FILE_ARGUMENTS[saved].items()}
    config["config"].update(arguments, **kwargs)
    return keras.saving.deserialize_keras_object(config)


def tokenizer_from_json(path, **kwargs) -> Tokenizer:
    """The tokenizer a Hugging Face `tokenizer.json` describes: WordPiece or byte-level BPE.

    WordPiece takes its casing from the `BertNormalizer` (or `Lowercase` / `StripAccents`
    normalizers); BPE must use the `ByteLevel` pre-tokenizer (GPT-2, RoBERTa) and keeps
    the special added tokens of its vocabulary. `kwargs` go to the tokenizer.
    """
    try:
        spec = json.loads(Path(path).read_text(encoding="utf-8"))
        model = spec["model"]
        vocabulary, model_type = model["vocab"], model["type"]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise ValueError(
            f"`path` {str(path)!r} is not a Hugging Face tokenizer.json ({error!r})."
        ) from None
    if model_type == "WordPiece":
        tokens = sorted(vocabulary, key=vocabulary.get)
        settings = dict(
            unknown_token=model.get("unk_token", "[UNK]"),
            suffix_indicator=model.get("continuing_subword_prefix", "##"),
            **_casing(spec.get("normalizer"), path),
        )
        return WordPieceTokenizer(tokens, **{**settings, **kwargs})
    if model_type == "BPE":
        pre_tokenizers = _flatten(spec.get("pre_tokenizer"))
        byte_level = [p for p in pre_tokenizers if p.get("type") == "ByteLevel"]
        # GPT-2's: its regex split, no space added before the text.
        if (
            len(pre_tokenizers) != 1
            or not byte_level
            or byte_level[0].get("add_prefix_space")
            or not byte_level[0].get("use_regex", True)
        ):
            raise ValueError(
                f"Only GPT-2's byte-level BPE is supported (one ByteLevel pre-tokenizer, "
                f"add_prefix_space false): {str(path)!r} has {spec.get('pre_tokenizer')!r}."
            )
        merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
        added = spec.get("added_tokens") or []
        special = [t["content"] for t in added if t.get("special") and t["content"] in vocabulary]
        settings = dict(special_tokens=special)
        return BytePairTokenizer(vocabulary, merges, **{**settings, **kwargs})
    raise ValueError(
        f"`path` {str(path)!r} holds a {model_type!r} model; tokenizer.json files of "
        "'WordPiece' and 'BPE' models are supported (SentencePiece: load its *.model)."
    )


def _flatten(component) -> list[dict]:
    """A normalizer / pre-tokenizer and the members of a `Sequence` of them."""
    if not component:
        return []
    if component.get("type") == "Sequence":
        members = component.get("normalizers") or component.get("pretokenizers") or []
        return [part for member in members for part in _flatten(member)]
    return [component]


def _casing(normalizer, path) -> dict:
    """`lowercase` / `strip_accents` of WordPiece from a tokenizer.json normalizer."""
    parts = _flatten(normalizer)
    types = {part.get("type") for part in parts}
    unknown = types - {"BertNormalizer", "Lowercase", "StripAccents", "NFD"}
    if unknown:
        raise ValueError(
            f"Unsupported WordPiece normalizer {sorted(unknown)} in {str(path)!r}; "
            "supported: BertNormalizer, Lowercase, StripAccents, NFD."
        )
    bert = next((p for p in parts if p["type"] == "BertNormalizer"), None)
    if bert is not None:
        return dict(lowercase=bert.get("lowercase", True), strip_accents=bert.get("strip_accents"))
    return dict(lowercase="Lowercase" in types, strip_accents="StripAccents" in types)
