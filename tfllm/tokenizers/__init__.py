"""Tokenizers that run in the TensorFlow graph, and vocabulary training."""

from tfllm.tokenizers.base import Tokenizer
from tfllm.tokenizers.byte_pair import BytePairTokenizer
from tfllm.tokenizers.sentencepiece import SentencePieceTokenizer
from tfllm.tokenizers.training import train_bpe, train_sentencepiece, train_wordpiece
from tfllm.tokenizers.wordpiece import WordPieceTokenizer

__all__ = [
    "BytePairTokenizer",
    "SentencePieceTokenizer",
    "Tokenizer",
    "WordPieceTokenizer",
    "train_bpe",
    "train_sentencepiece",
    "train_wordpiece",
]
