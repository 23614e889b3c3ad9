"""Vocabulary training against the trainers used directly, and the tokenizers' errors."""

import json

import pytest
import sentencepiece
from tokenizers import BertWordPieceTokenizer, ByteLevelBPETokenizer, normalizers, pre_tokenizers

from tests.wordpiece_reference import count_words, learn_wordpiece
from tfllm import assets
from tfllm.tokenizers import (
    BytePairTokenizer,
    SentencePieceTokenizer,
    WordPieceTokenizer,
    train_bpe,
    train_sentencepiece,
    train_wordpiece,
)
from tfllm.tokenizers.training import BERT_SPECIAL_TOKENS

TRAIN_PLAYS = [
    "comedies/a-midsummer-night-s-dream.md",
    "roman/julius-caesar.md",
    "romances/the-tempest.md",
]
SIZE = 800


@pytest.fixture(scope="session")
def plays():
    root = assets.shakespeare_path()
    return [root / name for name in TRAIN_PLAYS]


@pytest.fixture(scope="session")
def held_out():
    """Lines of a play not trained on (Macbeth)."""
    return (assets.shakespeare_path() / "tragedies/macbeth.md").read_text("utf-8").splitlines()


def lines_of(files) -> list[str]:
    # Line ends kept: trainers reading files see them (BPE learns "Ġ Ċ" merges from them).
    return [line for f in files for line in f.read_text("utf-8").splitlines(keepends=True)]


def ids(tokenizer, texts):
    return tokenizer.tokenize(texts).to_list()


def tokens(tokenizer, texts):
    return [[tokenizer.id_to_token(i) for i in row] for row in ids(tokenizer, texts)]


@pytest.mark.assets
def test_train_wordpiece(plays, held_out, tmp_path):
    tokenizer = train_wordpiece(plays, SIZE, output_dir=tmp_path)
    vocab = tokenizer.get_vocabulary()
    assert len(vocab) == SIZE and vocab[:5] == ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    assert not [t for t in vocab if not t.strip() or t.startswith("## ") or t == "##"]
    assert (tmp_path / "vocab.txt").read_text("utf-8").split("\n")[:-1] == vocab
    assert (tmp_path / "vocab.txt").stat().st_mode & 0o777 == 0o644  # others (servers) read it
    assert ids(WordPieceTokenizer(tmp_path / "vocab.txt"), held_out) == ids(tokenizer, held_out)
    loaded = BertWordPieceTokenizer(str(tmp_path / "vocab.txt"))
    want = [e.ids for e in loaded.encode_batch(held_out, add_special_tokens=False)]
    assert ids(tokenizer, held_out) == want

    # Hugging Face's trainer orders tokens of equal rank differently from run to run
    # (hash maps), so independent trainings agree on the tokens, not on every id.
    reference = BertWordPieceTokenizer()
    reference.train([str(p) for p in plays], vocab_size=SIZE, min_frequency=2)
    assert set(reference.get_vocab()) == set(vocab)
    want = [e.tokens for e in reference.encode_batch(held_out, add_special_tokens=False)]
    assert tokens(tokenizer, held_out) == want
    from_texts = train_wordpiece(iter(lines_of(plays)), SIZE)
    assert tokens(from_texts, held_out) == want


@pytest.mark.assets
def test_train_bpe(plays, held_out, tmp_path):
    tokenizer = train_bpe(plays, SIZE, output_dir=tmp_path)
    assert tokenizer.vocabulary_size() == SIZE
    assert tokenizer.token_to_id("<|endoftext|>") == 0 == tokenizer.eos_token_id
    vocab_file, merges_file = tmp_path / "vocab.json", tmp_path / "merges.txt"
    assert json.loads(vocab_file.read_text("utf-8")) == {
        t: i for i, t in enumerate(tokenizer.get_vocabulary())
    }
    assert ids(BytePairTokenizer(vocab_file, merges_file), held_out) == ids(tokenizer, held_out)
    loaded = ByteLevelBPETokenizer(str(vocab_file), str(merges_file))
    loaded.add_special_tokens(["<|endoftext|>"])
    assert ids(tokenizer, held_out) == [e.ids for e in loaded.encode_batch(held_out)]

    reference = ByteLevelBPETokenizer()
    reference.train(
        [str(p) for p in plays], vocab_size=SIZE, min_frequency=2, special_tokens=["<|endoftext|>"]
    )
    assert reference.get_vocab() == json.loads(vocab_file.read_text("utf-8"))
    assert ids(tokenizer, held_out) == [e.ids for e in reference.encode_batch(held_out)]
    from_texts = train_bpe(iter(lines_of(plays)), SIZE)
    assert from_texts.get_vocabulary() == tokenizer.get_vocabulary()
    assert from_texts.merges == tokenizer.merges


@pytest.mark.assets
def test_train_sentencepiece(plays, held_out, tmp_path):
    tokenizer = train_sentencepiece(plays, SIZE, output_dir=tmp_path)
    assert tokenizer.get_vocabulary()[:4] == ["<unk>", "<s>", "</s>", "<pad>"]
    assert (tokenizer.unk_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id) == (0, 1, 2)
    assert tokenizer.pad_token_id == 3
    loaded = SentencePieceTokenizer(tmp_path / "spm.model")
    assert ids(loaded, held_out) == ids(tokenizer, held_out)
    processor = sentencepiece.SentencePieceProcessor(model_file=str(tmp_path / "spm.model"))
    assert ids(tokenizer, held_out) == processor.encode(held_out)

    sentencepiece.SentencePieceTrainer.train(
        input=[str(p) for p in plays],
        model_prefix=str(tmp_path / "reference"),
        vocab_size=SIZE,
        model_type="unigram",
        character_coverage=0.9995,
        pad_id=3,
        minloglevel=2,
    )
    reference = sentencepiece.SentencePieceProcessor(model_file=str(tmp_path / "reference.model"))
    pieces = [(reference.id_to_piece(i), reference.get_score(i)) for i in range(SIZE)]
    assert [(processor.id_to_piece(i), processor.get_score(i)) for i in range(SIZE)] == pieces
    assert ids(tokenizer, held_out) == reference.encode(held_out)
    from_texts = train_sentencepiece(iter(lines_of(plays)), SIZE)
    assert ids(from_texts, held_out) == ids(tokenizer, held_out)


@pytest.mark.parametrize("as_files", [False, True], ids=["texts", "files"])
def test_wordpiece_training_is_deterministic(tmp_path, as_files):
    """Equally frequent pairs: "ab" ... "az" twice each, room for one merge. Hugging Face's
    trainer breaks the tie by the ids it gives "##b" ... "##z", in hash-map order."""
    texts = [f"a{c} a{c}" for c in "bcdefghijklmnopqrstuvwxyz"]
    (tmp_path / "words.txt").write_text("\n".join(texts) + "\n")
    source = tmp_path / "words.txt" if as_files else texts
    size = 5 + 26 + 25 + 1  # special tokens, alphabet, "##b" ... "##z", one merge
    files = []
    for run in range(3):
        train_wordpiece(source, size, output_dir=tmp_path / str(run))
        files.append((tmp_path / str(run) / "vocab.txt").read_text("utf-8"))
    assert files[0] == files[1] == files[2]
    merged = [t for t in files[0].split("\n") if len(t) == 2 and not t.startswith("#")]
    assert merged == ["ab"]  # the tie goes to the smallest piece


@pytest.mark.assets
def test_wordpiece_training_equals_the_reference_learner(plays):
    """On real text, learnt down to pairs seen twice (thousands of ties), the vocabulary is
    the reference learner's in every run (Hugging Face's trainer alone changed ~30 pieces
    of 4,000 from run to run)."""
    # The reference on a known answer: "##i ##s" (4 times), then "t ##h" over "##h ##is"
    # (3 times each; smaller ids).
    pieces = learn_wordpiece({"this": 3, "is": 2, "his": 1}, 10, 2, ["[UNK]"])
    assert pieces == ["[UNK]", "h", "i", "s", "t", "##h", "##i", "##s", "##is", "th"]
    normalizer = normalizers.BertNormalizer(lowercase=True)
    words = count_words(lines_of(plays), normalizer, pre_tokenizers.BertPreTokenizer())
    want = learn_wordpiece(words, 4000, 2, BERT_SPECIAL_TOKENS)
    specials = list(BERT_SPECIAL_TOKENS)
    for _ in range(2):
        got = train_wordpiece(plays, 4000).get_vocabulary()
        assert got == specials + sorted(set(want) - set(specials))


@pytest.mark.parametrize("train", [train_wordpiece, train_bpe, train_sentencepiece])
def test_training_rejects_bad_sizes_and_sources(train, tmp_path):
    with pytest.raises(ValueError, match="`vocabulary_size` must be positive. Received: 0"):
        train(["some text"], 0)
    with pytest.raises(ValueError, match="nope.txt"):
        train([tmp_path / "nope.txt"], 100)
    with pytest.raises(ValueError):  # nothing is written when training fails
        train([tmp_path / "nope.txt"], 100, output_dir=tmp_path / "out")
    assert not (tmp_path / "out").exists()


# --- errors --------------------------------------------------------------------------------


def test_wordpiece_vocabulary_errors(tmp_path):
    missing = tmp_path / "missing_vocab.txt"
    with pytest.raises(ValueError, match="missing_vocab.txt.*does not exist"):
        WordPieceTokenizer(missing)
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(ValueError, match="empty.txt.*is empty"):
        WordPieceTokenizer(tmp_path / "empty.txt")
    (tmp_path / "twice.txt").write_text("[UNK]\nhello\nworld\nhello\n")
    with pytest.raises(ValueError, match="'hello' twice"):
        WordPieceTokenizer(tmp_path / "twice.txt")
    with pytest.raises(ValueError, match="`unknown_token` '\\[UNK\\]' must be in the vocabulary"):
        WordPieceTokenizer(["hello", "world"])
    with pytest.raises(ValueError, match="`unknown_token` '<unk>'"):
        WordPieceTokenizer(["[UNK]", "hello"], unknown_token="<unk>")
    with pytest.raises(ValueError, match="must not be empty"):
        WordPieceTokenizer([])


def test_vocabulary_file_lines_end_at_newline_only(tmp_path):
    tokens = ["[UNK]", "\u2028", "##\u2028", "\x1c", "\x85", "a", "##b"]
    (tmp_path / "vocab.txt").write_text("\n".join(tokens) + "\n", encoding="utf-8")
    tokenizer = WordPieceTokenizer(tmp_path / "vocab.txt")
    assert tokenizer.get_vocabulary() == tokens
    assert tokenizer.tokenize("ab").numpy().tolist() == [5, 6]


def _byte_level_vocab(extra=()) -> dict[str, int]:
    """Hugging Face's 256 byte-level characters (not tfllm's table) plus `extra` tokens."""
    tokens = [*sorted(pre_tokenizers.ByteLevel.alphabet()), *extra]
    return {t: i for i, t in enumerate(tokens)}


def test_bpe_errors(tmp_path):
    vocab = _byte_level_vocab(["ab", "abc"])
    assert BytePairTokenizer(vocab, ["a b", "ab c"]).tokenize("abc").numpy().tolist() == [257]
    with pytest.raises(ValueError, match=r"line 2 \('ab x'\)"):
        BytePairTokenizer(vocab, ["a b", "ab x"])  # "abx" is not in the vocabulary
    (tmp_path / "merges.txt").write_text("#version: 0.2\na b\nq ab\n")
    with pytest.raises(ValueError, match=r"line 2 \('q ab'\)"):
        BytePairTokenizer(vocab, tmp_path / "merges.txt")
    with pytest.raises(ValueError, match="not a byte-level BPE vocabulary"):
        BytePairTokenizer({"a": 0, "b": 1, "ab": 2}, ["a b"])
    with pytest.raises(ValueError, match="missing_vocab.json.*does not exist"):
        BytePairTokenizer(tmp_path / "missing_vocab.json", tmp_path / "merges.txt")
    with pytest.raises(ValueError, match="missing_merges.txt.*does not exist"):
        BytePairTokenizer(vocab, tmp_path / "missing_merges.txt")
    (tmp_path / "list.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="must map tokens to int ids"):
        BytePairTokenizer(tmp_path / "list.json", [])
    with pytest.raises(ValueError, match="without gaps"):
        BytePairTokenizer({**vocab, "zz": len(vocab) + 5}, [])
    with pytest.raises(ValueError, match="not in the vocabulary"):
        BytePairTokenizer(vocab, [], special_tokens=["<|endoftext|>"])


def test_sentencepiece_errors(tmp_path):
    with pytest.raises(ValueError, match="missing.model.*does not exist"):
        SentencePieceTokenizer(tmp_path / "missing.model")
    with pytest.raises(ValueError, match="missing.model.*does not exist"):
        SentencePieceTokenizer(str(tmp_path / "missing.model"))
    with pytest.raises(ValueError, match="not a valid SentencePiece model"):
        SentencePieceTokenizer(b"this is not a serialized ModelProto")
    (tmp_path / "bad.model").write_bytes(b"\x00\x01garbage")
    with pytest.raises(ValueError, match="not a valid SentencePiece model"):
        SentencePieceTokenizer(tmp_path / "bad.model")
    with pytest.raises(ValueError, match="empty"):
        SentencePieceTokenizer(b"")
