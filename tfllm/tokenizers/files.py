"""Saving a tokenizer's vocabulary files into a folder, and loading any kind back."""

import json
from pathlib import Path

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


def save_tokenizer(tokenizer: Tokenizer, directory) -> list[Path]:
    """Writes the vocabulary files of `tokenizer` (the Hugging Face names) atomically.

    WordPiece: `vocab.txt`; byte-level BPE: `vocab.json` + `merges.txt`; SentencePiece:
    `spm.model`. Settings that are not in those files (casing) are Keras config.
    """
    if isinstance(tokenizer, WordPieceTokenizer):
        files = {"vocab.txt": ("\n".join(tokenizer.vocabulary) + "\n").encode()}
    elif isinstance(tokenizer, BytePairTokenizer):
        files = {
            "vocab.json": json.dumps(
                tokenizer.get_config()["vocabulary"], ensure_ascii=False
            ).encode(),
            "merges.txt": ("#version: 0.2\n" + "\n".join(tokenizer.merges) + "\n").encode(),
        }
    elif isinstance(tokenizer, SentencePieceTokenizer):
        files = {"spm.model": tokenizer.proto}
    else:
        raise TypeError(
            f"`tokenizer` must be a tfllm tokenizer. Received: {type(tokenizer).__name__}"
        )
    write_atomically(directory, files)
    return [Path(directory) / name for name in files]


def load_tokenizer(directory, kind: str | None = None, **kwargs) -> Tokenizer:
    """Loads the tokenizer whose files are in `directory` (`kind` is guessed from them).

    `kwargs` go to the tokenizer (e.g. `lowercase=False` for a cased WordPiece).
    """
    folder = Path(directory)
    present = {p.name for p in folder.iterdir()} if folder.is_dir() else set()
    if kind is None:
        if "vocab.txt" in present:
            kind = "wordpiece"
        elif {"vocab.json", "merges.txt"} <= present:
            kind = "bpe"
        elif any(name.endswith(".model") for name in present):
            kind = "sentencepiece"
        else:
            raise ValueError(
                f"`directory` {str(directory)!r} holds no vocab.txt, vocab.json + merges.txt "
                f"or *.model file. Found: {sorted(present)}"
            )
    if kind not in KINDS:
        raise ValueError(f"`kind` must be one of {tuple(KINDS)}. Received: {kind!r}")
    if kind == "wordpiece":
        return WordPieceTokenizer(folder / "vocab.txt", **kwargs)
    if kind == "bpe":
        return BytePairTokenizer(folder / "vocab.json", folder / "merges.txt", **kwargs)
    models = sorted(folder.glob("*.model"))
    if len(models) != 1:
        raise ValueError(
            f"`directory` {str(directory)!r} must hold one *.model file. "
            f"Found: {[m.name for m in models]}"
        )
    return SentencePieceTokenizer(models[0], **kwargs)
