"""Tokenizers that run in the TensorFlow graph, and vocabulary training."""

from tfllm.tokenizers.base import Tokenizer
from tfllm.tokenizers.byte_pair import BytePairTokenizer, frequent_words
from tfllm.tokenizers.files import load_tokenizer, save_tokenizer
from tfllm.tokenizers.sentencepiece import SentencePieceTokenizer
from tfllm.tokenizers.training import train_bpe, train_sentencepiece, train_wordpiece
from tfllm.tokenizers.wordpiece import WordPieceTokenizer

__all__ = [
    "BytePairTokenizer",
    "SentencePieceTokenizer",
    "Tokenizer",
    "WordPieceTokenizer",
    "frequent_words",
    "load_tokenizer",
    "save_tokenizer",
    "train_bpe",
    "train_sentencepiece",
    "train_wordpiece",
]
