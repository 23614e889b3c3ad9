"""Continued pretraining (`init_from` on pretraining tasks) from real checkpoint layouts."""

import json

import keras
import numpy as np
import pytest
import tensorflow as tf

from pipelines.datasets import pretraining_dataset_fn
from tests.test_presets import hf_bert_with_heads
from tfllm.config import RunConfig
from tfllm.losses import SparseCategoricalCrossentropy
from tfllm.models import BertPretrainer, CausalLM, GPTBackbone, MaskedLM
from tfllm.models.preset_io import read_preset
from tfllm.preprocessing import MaskedLMPreprocessor
from tfllm.pretraining import build_model, pretrain, read_starting_point

TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "the lazy dog jumps over the quick brown foxes!",
    "a fox. a dog. the fox jumps.",
]


def corpus(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text("\n".join(TEXTS * 4) + "\n")
    return str(path)


def mlm_config(tmp_path, folder, **kwargs):
    values = dict(
        task="masked_lm", init_from=str(folder), train_files=(corpus(tmp_path),),
        sequence_length=12, batch_size=2, steps=2, log_every=1, checkpoint_every=2,
        model_overrides={"dropout": 0.0}, output_dir=str(tmp_path / "runs"), name="mlm",
        learning_rate=1e-3,
    )  # fmt: skip
    return RunConfig(**{**values, **kwargs})


def test_masked_lm_starts_from_the_converted_checkpoint(tmp_path):
    folder = hf_bert_with_heads(tmp_path / "bert", nsp=False)
    config = mlm_config(tmp_path, folder)
    converted = read_preset(folder).task  # MaskedLM with the checkpoint's cls.predictions
    assert isinstance(converted, MaskedLM)
    start = read_starting_point(config)
    model = build_model(config, start.tokenizer.vocabulary_size(), start)
    for ours, theirs in zip(model.get_weights(), converted.get_weights(), strict=True):
        np.testing.assert_array_equal(ours, theirs)
    # The loss at step 0 of the run equals the converted model's loss on the same batch.
    masker = MaskedLMPreprocessor(start.tokenizer, 12, seed=config.seed)
    dataset = pretraining_dataset_fn(config, masker, list(config.train_files))
    x, y, w = next(iter(dataset(tf.distribute.InputContext())))
    loss = SparseCategoricalCrossentropy()(y, converted(x), sample_weight=w)
    history = pretrain(config, verbose=False)
    run = json.loads((tmp_path / "runs" / "mlm" / "history.json").read_text())
    assert run["loss"][0] == pytest.approx(float(loss), abs=1e-5)
    assert history["step"] == 2
    tokenizer = read_preset(tmp_path / "runs" / "mlm").tokenizer  # the checkpoint's own
    assert tokenizer.vocabulary == start.tokenizer.vocabulary


def test_heads_are_created_when_the_checkpoint_has_none(tmp_path, caplog):
    folder = hf_bert_with_heads(tmp_path / "bert", nsp=False)
    config = mlm_config(tmp_path, folder, task="bert_pretraining")
    start = read_starting_point(config)
    model = build_model(config, start.tokenizer.vocabulary_size(), start)
    assert isinstance(model, BertPretrainer)
    np.testing.assert_array_equal(
        model.mlm_head.get_weights()[-1], start.task.mlm_head.get_weights()[-1]
    )
    assert "no nsp_head weights" in caplog.text


def test_causal_lm_continues_a_gpt(tmp_path):
    from tfllm.tokenizers import WordPieceTokenizer

    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "the", "fox", "dog", "a", "jumps", ".", "!"]
    backbone = GPTBackbone.from_preset("gpt_tiny", vocabulary_size=len(words))
    lm = CausalLM(backbone, preprocessor=None)
    from tfllm.models.preset_io import save_preset

    save_preset(lm, tmp_path / "gpt", WordPieceTokenizer(words))
    config = mlm_config(tmp_path, tmp_path / "gpt", task="causal_lm", name="gpt")
    start = read_starting_point(config)
    model = build_model(config, len(words), start)
    assert model.backbone.packed_sequences  # pretraining packs documents
    for ours, theirs in zip(model.get_weights(), lm.get_weights(), strict=True):
        np.testing.assert_array_equal(ours, theirs)
    summary = pretrain(config, verbose=False)
    assert summary["step"] == 2 and np.isfinite(summary["loss"])
    # The run's model is saved with its preprocessor: it generates from raw text.
    trained = CausalLM.from_preset(tmp_path / "runs" / "gpt")
    assert trained.generate("the fox", max_length=8, stop_token_ids=None).startswith("the fox")


def test_errors(tmp_path):
    folder = hf_bert_with_heads(tmp_path / "bert", nsp=False)
    with pytest.raises(ValueError, match="needs a GPTBackbone"):
        read_starting_point(mlm_config(tmp_path, folder, task="causal_lm"))
    with pytest.raises(ValueError, match="does not exist"):
        read_starting_point(mlm_config(tmp_path, tmp_path / "nowhere"))
    config = mlm_config(tmp_path, folder, model_overrides={"hidden_dim": 8})
    start = read_starting_point(config)
    with pytest.raises((ValueError, TypeError)):
        build_model(config, 10, start)
    keras.config.set_dtype_policy("float32")
