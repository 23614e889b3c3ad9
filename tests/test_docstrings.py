"""Every docstring example of the modules below runs, and prints what it shows."""

import doctest
import importlib

import numpy as np
import pytest

import tfllm
from tfllm.models import (
    BertBackbone,
    BertPretrainer,
    CausalLM,
    GPTBackbone,
    MaskedLM,
    TextClassifier,
    TokenClassifier,
)

MODULES = [
    "tfllm.models.backbone",
    "tfllm.models.bert",
    "tfllm.models.causal_lm",
    "tfllm.models.gpt",
    "tfllm.models.preset_io",
    "tfllm.models.task",
    "tfllm.models.tasks",
    "tfllm.preprocessing.causal_lm",
    "tfllm.preprocessing.chat",
    "tfllm.tokenizers.files",
]
GLOBALS = dict(
    tfllm=tfllm,
    np=np,
    BertBackbone=BertBackbone,
    BertPretrainer=BertPretrainer,
    CausalLM=CausalLM,
    GPTBackbone=GPTBackbone,
    MaskedLM=MaskedLM,
    TextClassifier=TextClassifier,
    TokenClassifier=TokenClassifier,
)


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # examples that write files write here
    module = importlib.import_module(name)
    flags = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE
    result = doctest.testmod(module, extraglobs=GLOBALS, optionflags=flags, verbose=False)
    assert result.attempted > 0, f"{name} has no examples"
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples failed in {name}"
