"""Backbones, task models and named sizes."""

from tfllm.models.bert import BertBackbone
from tfllm.models.gpt import GPTBackbone
from tfllm.models.presets import PRESETS
from tfllm.models.tasks import (
    BertPretrainer,
    CausalLM,
    MaskedLM,
    TextClassifier,
    TokenClassifier,
)

__all__ = [
    "PRESETS",
    "BertBackbone",
    "BertPretrainer",
    "CausalLM",
    "GPTBackbone",
    "MaskedLM",
    "TextClassifier",
    "TokenClassifier",
]
