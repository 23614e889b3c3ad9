"""Vocabulary training with the well-kept trainers (`tokenizers`, `sentencepiece`).

Each `train_*` takes text as files (a `str`/`Path` or a list of `Path`s) or as any
iterable of strings, and returns the matching in-graph tokenizer. With `output_dir` the
vocabulary files are also written there, atomically (all or nothing).
"""

import contextlib
import io
import json
import sys
from collections.abc import Iterable
from pathlib import Path

from tfllm.io import atomic_path
from tfllm.tokenizers.byte_pair import BytePairTokenizer
from tfllm.tokenizers.sentencepiece import SentencePieceTokenizer
from tfllm.tokenizers.wordpiece import WordPieceTokenizer

BERT_SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


def _files_or_texts(source) -> tuple[list[str] | None, Iterable[str] | None]:
    if isinstance(source, (str, Path)):
        source = [Path(source)]
    if isinstance(source, (list, tuple)) and source and all(isinstance(s, Path) for s in source):
        missing = [str(s) for s in source if not s.is_file()]
        if missing:
            raise ValueError(f"`source` files do not exist: {missing[:5]}")
        return [str(s) for s in source], None
    if isinstance(source, Iterable):
        return None, (text for text in source)
    raise TypeError(
        f"`source` must be a path, a list of paths or strings. Received: {source!r:.80}"
    )


def _check_size(vocabulary_size):
    if isinstance(vocabulary_size, bool) or not isinstance(vocabulary_size, int):
        raise TypeError(f"`vocabulary_size` must be an int. Received: {vocabulary_size!r}")
    if vocabulary_size < 1:
        raise ValueError(f"`vocabulary_size` must be positive. Received: {vocabulary_size}")


def write_atomically(output_dir, files: dict[str, bytes]) -> None:
    """Writes `{name: content}` into `output_dir`; nothing is left half-written."""
    # Every file is staged before the first rename; a failure removes all the temporaries.
    with contextlib.ExitStack() as stack:
        for name, content in files.items():
            stack.enter_context(atomic_path(Path(output_dir) / name)).write_bytes(content)


def _train_hf(tokenizer, source, trainer):
    files, texts = _files_or_texts(source)
    if files is not None:
        tokenizer.train(files, trainer=trainer)
    else:
        tokenizer.train_from_iterator(texts, trainer=trainer)
    return json.loads(tokenizer.to_str())["model"]


def train_wordpiece(
    source,
    vocabulary_size: int,
    *,
    lowercase: bool = True,
    strip_accents: bool | None = None,
    special_tokens=BERT_SPECIAL_TOKENS,
    min_frequency: int = 2,
    output_dir=None,
) -> WordPieceTokenizer:
    """Trains a BERT WordPiece vocabulary (`vocab.txt`) with Hugging Face's trainer; the
    same text always gives the same file. Texts given as an iterable are held in memory
    (they are read twice).

    Example:
    >>> tokenizer = train_wordpiece(["some text", "more text"], vocabulary_size=200)
    >>> tokenizer.vocabulary[:6]  # the special tokens, then the pieces in sorted order
    ['[PAD]', '[UNK]', '[CLS]', '[SEP]', '[MASK]', '##e']
    >>> tokenizer.detokenize(tokenizer.tokenize("More text")).numpy()
    b'more text'
    """
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers

    _check_size(vocabulary_size)
    files, texts = _files_or_texts(source)
    source = [Path(f) for f in files] if files is not None else list(texts)

    def train(size, special_tokens):
        tokenizer = Tokenizer(models.WordPiece(unk_token="[UNK]"))
        tokenizer.normalizer = normalizers.BertNormalizer(
            clean_text=True,
            handle_chinese_chars=True,
            strip_accents=strip_accents,
            lowercase=lowercase,
        )
        tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        trainer = trainers.WordPieceTrainer(
            vocab_size=size,
            min_frequency=min_frequency,
            special_tokens=special_tokens,
            continuing_subword_prefix="##",
            show_progress=sys.stderr.isatty(),  # its bars write blank lines into a log
        )
        return _train_hf(tokenizer, source, trainer)["vocab"]

    # Hugging Face's trainer merges the most frequent pair first and breaks ties by the
    # pieces' ids: the characters in sorted order, then the "##c" pieces in hash-map order,
    # different from run to run. A first pass without merges finds the pieces; the real
    # pass gets them all as special tokens, in sorted order, so ties always go one way.
    specials = list(special_tokens)
    alphabet = [t for t in train(1, specials) if t not in specials]
    starts = sorted(t for t in alphabet if not t.startswith("##"))
    continuations = sorted(t for t in alphabet if t.startswith("##"))
    vocab = train(vocabulary_size, specials + starts + continuations)
    # Special tokens first, as given; then every other piece in sorted order.
    tokens = specials + sorted(t for t in vocab if t not in set(specials))
    if output_dir is not None:
        write_atomically(output_dir, {"vocab.txt": ("\n".join(tokens) + "\n").encode()})
    return WordPieceTokenizer(tokens, lowercase=lowercase, strip_accents=strip_accents)


def train_bpe(
    source,
    vocabulary_size: int,
    *,
    special_tokens=("<|endoftext|>",),
    min_frequency: int = 2,
    output_dir=None,
) -> BytePairTokenizer:
    """Trains a GPT-2 style byte-level BPE (`vocab.json` + `merges.txt`)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    _check_size(vocabulary_size)
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocabulary_size,
        min_frequency=min_frequency,
        special_tokens=list(special_tokens),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=sys.stderr.isatty(),
    )
    model = _train_hf(tokenizer, source, trainer)
    vocab = model["vocab"]
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    if output_dir is not None:
        write_atomically(
            output_dir,
            {
                "vocab.json": json.dumps(vocab, ensure_ascii=False).encode(),
                "merges.txt": ("#version: 0.2\n" + "\n".join(merges) + "\n").encode(),
            },
        )
    return BytePairTokenizer(vocab, merges, special_tokens=list(special_tokens))


def train_sentencepiece(
    source,
    vocabulary_size: int,
    *,
    model_type: str = "unigram",
    character_coverage: float = 0.9995,
    output_dir=None,
    **options,
) -> SentencePieceTokenizer:
    """Trains a SentencePiece model (`spm.model`): ids 0 `<unk>`, 1 `<s>`, 2 `</s>`, 3 `<pad>`.

    `options` go to `sentencepiece.SentencePieceTrainer.train` as they are.
    """
    import sentencepiece

    _check_size(vocabulary_size)
    files, texts = _files_or_texts(source)
    if files is not None:
        texts = (line for f in files for line in Path(f).read_text(encoding="utf-8").split("\n"))
    model = io.BytesIO()
    try:
        sentencepiece.SentencePieceTrainer.train(
            sentence_iterator=iter(texts),
            model_writer=model,
            vocab_size=vocabulary_size,
            model_type=model_type,
            character_coverage=character_coverage,
            pad_id=3,
            **{"minloglevel": 2, **options},
        )
    except RuntimeError as error:
        raise ValueError(f"SentencePiece training failed: {error}") from None
    proto = model.getvalue()
    if output_dir is not None:
        write_atomically(output_dir, {"spm.model": proto})
    return SentencePieceTokenizer(proto)
