"""Keras layers for transformer language models."""

from tfllm.layers.attention import MultiHeadAttention, compute_attention_mask
from tfllm.layers.dense import Dense
from tfllm.layers.dropout import Dropout
from tfllm.layers.embedding import (
    PositionEmbedding,
    RotaryEmbedding,
    SinusoidalPositionEncoding,
    TokenEmbedding,
)
from tfllm.layers.heads import MaskedLMHead
from tfllm.layers.normalization import LayerNormalization
from tfllm.layers.transformer import TransformerDecoderBlock, TransformerEncoderBlock

__all__ = [
    "Dense",
    "Dropout",
    "LayerNormalization",
    "MaskedLMHead",
    "MultiHeadAttention",
    "PositionEmbedding",
    "RotaryEmbedding",
    "SinusoidalPositionEncoding",
    "TokenEmbedding",
    "TransformerDecoderBlock",
    "TransformerEncoderBlock",
    "compute_attention_mask",
]
