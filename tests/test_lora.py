"""LoRA on the backbones: exact at initialization, adapters alone train, save/load, merge.

References: the base model itself (LoRA starts as the identity), and a plain backbone whose
kernels are merged in numpy (float64) from the base kernels and the adapters.
"""

import os

import h5py
import keras
import numpy as np
import pytest
import tensorflow as tf

from tfllm.generation import generate
from tfllm.models import BertBackbone, CausalLM, GPTBackbone, TextClassifier
from tfllm.models.presets import PRESETS

RANK = 4
PROMPTS = [[5, 6, 7, 8], [9, 10]]


def backbone_of(preset, **overrides):
    cls = BertBackbone if PRESETS[preset]["backbone"] == "bert" else GPTBackbone
    return cls.from_preset(preset, dropout=0.0, **overrides)


def inputs_of(backbone, batch=2, length=8, seed=0):
    ids = np.random.default_rng(seed).integers(1, backbone.vocabulary_size, (batch, length))
    inputs = {"token_ids": ids.astype("int32"), "padding_mask": np.ones((batch, length), "int32")}
    if isinstance(backbone, BertBackbone):
        inputs["segment_ids"] = np.zeros((batch, length), "int32")
    return inputs


def outputs_of(model, inputs):
    outputs = model(inputs)
    outputs = outputs["sequence_output"] if isinstance(outputs, dict) else outputs
    return keras.ops.convert_to_numpy(outputs)


def lora_weights(model):
    return [w for w in model.weights if "lora_kernel" in w.path]


def randomize_adapters(backbone, seed=1, scale=0.3):
    """Nonzero `A` and `B` (B starts at zero), large enough to change outputs and tokens."""
    rng = np.random.default_rng(seed)
    for weight in lora_weights(backbone):
        weight.assign(rng.normal(0.0, scale, weight.shape).astype("float32"))


def merged_in_numpy(backbone, base_weights, lora_alpha=RANK):
    """A plain backbone of the same config: base weights, kernels `+= alpha/r * A @ B` (f64)."""
    plain = type(backbone).from_config(backbone.get_config())
    plain.set_weights(base_weights)
    adapted = {w.path.rsplit("/", 1)[0]: {} for w in lora_weights(backbone)}
    for weight in lora_weights(backbone):
        layer, name = weight.path.rsplit("/", 1)
        adapted[layer][name] = np.asarray(weight.numpy(), np.float64)
    by_path = {w.path: w for w in plain.weights}  # paths start below the model
    for layer, pair in adapted.items():
        kernel = by_path[layer + "/kernel"]
        delta = lora_alpha / RANK * pair["lora_kernel_a"] @ pair["lora_kernel_b"]
        kernel.assign((np.asarray(kernel.numpy(), np.float64) + delta).astype("float32"))
    return plain


def hand_count(preset, rank, targets=("qkv", "attention_output", "intermediate", "output")):
    """Adapter parameters `rank * (in + out)` per adapted projection, from the config alone."""
    config = PRESETS[preset]["config"]
    d, ff, n = config["hidden_dim"], config["intermediate_dim"], config["num_heads"]
    k = config.get("num_key_value_heads") or n
    gated = config.get("activation") == "swiglu"
    shapes = {
        "qkv": (d, (n + 2 * k) * d // n),
        "attention_output": (d, d),
        "intermediate": (d, ff * (2 if gated else 1)),
        "output": (ff, d),
    }
    return config["num_layers"] * sum(rank * sum(shapes[t]) for t in targets)


def trainable_count(model):
    return sum(int(np.prod(w.shape)) for w in model.trainable_weights)


# --- initialization and parameter counts ---------------------------------------------------


@pytest.mark.parametrize("preset", ["gpt_tiny", "llama_tiny", "bert_tiny"])
def test_lora_at_initialization_equals_the_base_model_exactly(preset):
    backbone = backbone_of(preset)
    inputs = inputs_of(backbone)
    base = outputs_of(backbone, inputs)
    backbone.enable_lora(RANK)
    assert backbone.lora_rank == RANK
    np.testing.assert_array_equal(outputs_of(backbone, inputs), base)  # B starts at zero


@pytest.mark.parametrize("preset", ["gpt_tiny", "llama_tiny", "bert_tiny"])
def test_trainable_parameters_are_the_adapters_alone(preset):
    backbone = backbone_of(preset)
    backbone.enable_lora(RANK)
    assert trainable_count(backbone) == hand_count(preset, RANK)
    assert all("lora_kernel" in w.path for w in backbone.trainable_weights)
    # By name or by name path; "output" alone is both attention's and feed-forward's.
    only = backbone_of(preset)
    only.enable_lora(2, target_layer_names=["qkv", "attention/output"])
    assert trainable_count(only) == hand_count(preset, 2, ("qkv", "attention_output"))


# --- training --------------------------------------------------------------------------------


def snapshot(model):
    return {w.path: np.array(w.numpy()) for w in model.weights}


def test_one_step_changes_only_adapters_and_the_task_head():
    backbone = backbone_of("bert_tiny")
    classifier = TextClassifier(backbone, num_classes=3, dropout=0.0)
    backbone.enable_lora(RANK)  # after the task is built, as keras-hub
    classifier.compile(optimizer=keras.optimizers.AdamW(1e-2), loss="auto")
    inputs = inputs_of(backbone, batch=4)
    before = snapshot(classifier)
    classifier.train_on_batch(inputs, np.array([0, 1, 2, 1]))
    changed = {
        path
        for path, value in snapshot(classifier).items()
        if not np.array_equal(value, before[path])
    }
    head = {w.path for w in classifier.output_dense.weights}
    adapters_b = {w.path for w in lora_weights(backbone) if w.path.endswith("lora_kernel_b")}
    # B gets a gradient at once (A's is zero while B is; weight decay still moves it).
    assert head | adapters_b <= changed <= head | {w.path for w in lora_weights(backbone)}


def test_causal_lm_fits_with_lora_and_keeps_its_base_weights():
    backbone = backbone_of("gpt_tiny")
    lm = CausalLM(backbone)
    backbone.enable_lora(RANK)
    lm.compile(optimizer=keras.optimizers.Adam(1e-2), loss="auto")
    inputs = inputs_of(backbone, batch=4)
    base = {w.path: np.array(w.numpy()) for w in backbone.weights if "lora" not in w.path}
    losses = [
        lm.train_on_batch(inputs, inputs["token_ids"], return_dict=True)["loss"] for _ in range(3)
    ]
    assert losses[-1] < losses[0]
    after = {w.path: w.numpy() for w in backbone.weights if "lora" not in w.path}
    assert all(np.array_equal(after[path], value) for path, value in base.items())


# --- merge -----------------------------------------------------------------------------------


@pytest.mark.parametrize("preset", ["gpt_tiny", "llama_tiny"])
def test_merge_equals_unmerged_and_a_numpy_merge_in_outputs_and_generated_tokens(preset):
    backbone = backbone_of(preset)
    lm = CausalLM(backbone)
    inputs = inputs_of(backbone)
    base_tokens = generate(lm, PROMPTS, 6)  # also leaves a traced decoder of the base
    base_weights = backbone.get_weights()
    backbone.enable_lora(RANK)
    randomize_adapters(backbone)
    unmerged = outputs_of(lm, inputs)
    predicted = lm.predict(inputs, verbose=0)  # a traced predict step that reads LoRA weights
    tokens = generate(lm, PROMPTS, 6)

    reference = CausalLM(merged_in_numpy(backbone, base_weights))
    np.testing.assert_allclose(unmerged, outputs_of(reference, inputs), atol=1e-5)
    assert tokens == generate(reference, PROMPTS, 6) != base_tokens  # LoRA reaches decoding

    backbone.merge_lora()
    assert backbone.lora_rank is None and not lora_weights(lm)
    assert len(backbone.weights) == len(reference.backbone.weights)
    assert trainable_count(backbone) == trainable_count(reference.backbone)
    np.testing.assert_allclose(outputs_of(lm, inputs), unmerged, atol=1e-5)
    np.testing.assert_allclose(lm.predict(inputs, verbose=0), predicted, atol=1e-5)
    assert generate(lm, PROMPTS, 6) == tokens
    # LoRA can be enabled again on the merged weights.
    backbone.enable_lora(2)
    np.testing.assert_allclose(outputs_of(lm, inputs), unmerged, atol=1e-5)


def test_an_export_after_merge_has_no_adapters_and_equals_the_lora_model(tmp_path):
    backbone = backbone_of("gpt_tiny")
    lm = CausalLM(backbone)
    plain_count = len(lm.weights)
    backbone.enable_lora(RANK)
    randomize_adapters(backbone)
    inputs = inputs_of(backbone)
    expected = outputs_of(lm, inputs)
    backbone.merge_lora()
    archive = keras.export.ExportArchive()
    archive.track(lm)
    spec = tf.TensorSpec([None, None], tf.int32)
    archive.add_endpoint(
        "logits",
        tf.function(
            lambda ids, mask: lm({"token_ids": ids, "padding_mask": mask}),
            input_signature=[spec, spec],
        ),
    )
    archive.write_out(str(tmp_path / "export"), verbose=False)
    loaded = tf.saved_model.load(str(tmp_path / "export"))
    assert len(loaded.variables) == plain_count
    assert not [v for v in loaded.variables if "lora" in v.name]
    exported = loaded.logits(tf.constant(inputs["token_ids"]), tf.constant(inputs["padding_mask"]))
    np.testing.assert_allclose(exported.numpy(), expected, atol=1e-5)


# --- saving ----------------------------------------------------------------------------------


@pytest.mark.parametrize("preset", ["gpt_tiny", "bert_tiny"])
def test_lora_weights_alone_save_and_load_into_a_fresh_backbone(preset, tmp_path):
    backbone = backbone_of(preset)
    base_weights = backbone.get_weights()
    backbone.enable_lora(RANK, lora_alpha=8)
    randomize_adapters(backbone)
    inputs = inputs_of(backbone)
    expected = outputs_of(backbone, inputs)
    path = tmp_path / "adapters.lora.h5"
    backbone.save_lora_weights(path)
    assert os.listdir(tmp_path) == ["adapters.lora.h5"]  # no temporary left
    base_bytes = sum(w.nbytes for w in base_weights)
    assert path.stat().st_size < 0.2 * base_bytes
    with h5py.File(path) as file:
        assert (file.attrs["rank"], file.attrs["lora_alpha"]) == (RANK, 8.0)
        assert "transformer_layer_0/attention/qkv/lora_kernel_a" in file

    fresh = backbone_of(preset)  # LoRA off: the file's rank, alpha and layers are enabled
    fresh.set_weights(base_weights)
    assert not np.allclose(outputs_of(fresh, inputs), expected, atol=1e-3)
    fresh.load_lora_weights(path)
    assert fresh.lora_rank == RANK
    np.testing.assert_array_equal(outputs_of(fresh, inputs), expected)
    assert trainable_count(fresh) == hand_count(preset, RANK)

    enabled = backbone_of(preset)  # LoRA on at the same rank and alpha
    enabled.set_weights(base_weights)
    enabled.enable_lora(RANK, lora_alpha=8)
    enabled.load_lora_weights(path)
    np.testing.assert_array_equal(outputs_of(enabled, inputs), expected)


def test_loading_lora_weights_that_do_not_fit_raises_and_changes_nothing(tmp_path):
    backbone = backbone_of("gpt_tiny")
    backbone.enable_lora(RANK)
    path = tmp_path / "gpt.lora.h5"
    backbone.save_lora_weights(path)

    other_rank = backbone_of("gpt_tiny")
    other_rank.enable_lora(2)
    with pytest.raises(ValueError, match="rank=4.*rank=2"):
        other_rank.load_lora_weights(path)
    other_alpha = backbone_of("gpt_tiny")
    other_alpha.enable_lora(RANK, lora_alpha=16)
    with pytest.raises(ValueError, match="lora_alpha"):
        other_alpha.load_lora_weights(path)
    other_layers = backbone_of("gpt_tiny")
    other_layers.enable_lora(RANK, target_layer_names=["qkv"])
    with pytest.raises(ValueError, match="feedforward/intermediate"):
        other_layers.load_lora_weights(path)
    wider = backbone_of("gpt_tiny", intermediate_dim=128)
    with pytest.raises(ValueError, match="another config"):
        wider.load_lora_weights(path)
    assert wider.lora_rank is None and not lora_weights(wider)  # nothing enabled
    deeper = backbone_of("gpt_tiny", num_layers=3)
    deeper.enable_lora(RANK)
    with pytest.raises(ValueError, match="no weights for.*transformer_layer_2"):
        deeper.load_lora_weights(path)
    with pytest.raises(ValueError, match="of a GPTBackbone, not a BertBackbone"):
        backbone_of("bert_tiny").load_lora_weights(path)
    with pytest.raises(FileNotFoundError, match="missing.lora.h5"):
        backbone_of("gpt_tiny").load_lora_weights(tmp_path / "missing.lora.h5")
    with h5py.File(tmp_path / "other.lora.h5", "w") as file:
        file["x"] = [1.0]
    with pytest.raises(ValueError, match="not a `.lora.h5` file"):
        backbone_of("gpt_tiny").load_lora_weights(tmp_path / "other.lora.h5")


# A model saved before it trained has an unbuilt optimizer: Keras warns when loading it.
@pytest.mark.filterwarnings("ignore:Skipping variable loading for optimizer")
def test_keras_files_hold_merged_weights_and_task_configs_round_trip(tmp_path):
    backbone = backbone_of("gpt_tiny")
    lm = CausalLM(backbone)
    backbone.enable_lora(RANK)
    randomize_adapters(backbone)
    inputs = inputs_of(backbone)
    lm.save(tmp_path / "lm.keras")
    loaded = keras.saving.load_model(tmp_path / "lm.keras")
    # Keras's Dense saves `kernel + A @ B`; the model loads without LoRA, equal outputs.
    np.testing.assert_allclose(outputs_of(loaded, inputs), outputs_of(lm, inputs), atol=1e-5)
    assert loaded.backbone.lora_rank is None and not lora_weights(loaded)
    assert CausalLM.from_config(lm.get_config()).get_config() == lm.get_config()
    classifier = TextClassifier(backbone_of("bert_tiny"), num_classes=2)
    classifier.backbone.enable_lora(RANK)
    assert (
        TextClassifier.from_config(classifier.get_config()).get_config() == classifier.get_config()
    )


# --- errors ----------------------------------------------------------------------------------


@pytest.mark.parametrize("rank", [0, -1, 2.5, True, "4", None])
def test_enable_lora_rejects_a_rank_that_is_not_a_positive_int(rank):
    with pytest.raises(ValueError, match=f"`rank` must be a positive int. Received: rank={rank!r}"):
        backbone_of("gpt_tiny").enable_lora(rank)


def test_lora_errors_name_the_argument_or_the_missing_step(tmp_path):
    backbone = backbone_of("gpt_tiny")
    with pytest.raises(ValueError, match="`lora_alpha`.*Received: 0"):
        backbone.enable_lora(RANK, lora_alpha=0)
    with pytest.raises(TypeError, match="`target_layer_names`.*'qkv'"):
        backbone.enable_lora(RANK, target_layer_names="qkv")
    with pytest.raises(ValueError, match=r"`target_layer_names`.*matching none: \['query'\]"):
        backbone.enable_lora(RANK, target_layer_names=["qkv", "query"])
    assert backbone.lora_rank is None and trainable_count(backbone) > 0  # nothing changed
    for call in (backbone.merge_lora, lambda: backbone.save_lora_weights(tmp_path / "a.lora.h5")):
        with pytest.raises(ValueError, match="not enabled.*enable_lora"):
            call()
    backbone.enable_lora(RANK)
    with pytest.raises(ValueError, match="already enabled.*rank=4"):
        backbone.enable_lora(RANK)
    with pytest.raises(ValueError, match="`filepath` must end in `.lora.h5`"):
        backbone.save_lora_weights(tmp_path / "adapters.h5")


def test_lora_trains_on_two_replicas(mirrored_strategy):
    with mirrored_strategy.scope():  # adapters are created where the model lives
        backbone = backbone_of("gpt_tiny")
        lm = CausalLM(backbone)
        backbone.enable_lora(RANK)
        lm.compile(optimizer=keras.optimizers.Adam(1e-2), loss="auto")
    assert all(isinstance(w.value, tf.distribute.DistributedValues) for w in lora_weights(lm))
    inputs = inputs_of(backbone, batch=4)
    base = {w.path: np.array(w.numpy()) for w in backbone.weights if "lora" not in w.path}
    lm.fit(inputs, inputs["token_ids"], batch_size=4, epochs=2, verbose=0)
    after = {w.path: w.numpy() for w in backbone.weights if "lora" not in w.path}
    assert all(np.array_equal(after[path], value) for path, value in base.items())
    assert any(np.abs(w.numpy()).max() > 0 for w in lora_weights(lm) if "kernel_b" in w.path)
