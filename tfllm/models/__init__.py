"""Backbones, task models and named sizes."""

from tfllm.models.bert import BertBackbone
from tfllm.models.causal_lm import CausalLM
from tfllm.models.gpt import GPTBackbone
from tfllm.models.gpt_classifier import GPTClassifier
from tfllm.models.presets import PRESETS
from tfllm.models.task import Task
from tfllm.models.tasks import BertPretrainer, MaskedLM, TextClassifier, TokenClassifier

__all__ = [
    "PRESETS",
    "Task",
    "BertBackbone",
    "BertPretrainer",
    "CausalLM",
    "GPTBackbone",
    "GPTClassifier",
    "MaskedLM",
    "TextClassifier",
    "TokenClassifier",
]
