"""Contracts of the backbones and tasks: shapes, configs, saving, training, masks, KV cache."""

import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfllm.models import (
    BertBackbone,
    BertPretrainer,
    CausalLM,
    GPTBackbone,
    MaskedLM,
    TextClassifier,
)

# Every model kind under test, built from the tiny presets (vocabulary 1024, hidden 64).
MODELS = {
    "bert": lambda: BertBackbone.from_preset("bert_tiny"),
    "gpt": lambda: GPTBackbone.from_preset("gpt_tiny"),
    "llama": lambda: GPTBackbone.from_preset("llama_tiny"),
    "gpt_packed": lambda: GPTBackbone.from_preset("gpt_tiny", packed_sequences=True),
    "causal_lm": lambda: CausalLM(GPTBackbone.from_preset("gpt_tiny")),
    "causal_lm_llama": lambda: CausalLM(GPTBackbone.from_preset("llama_tiny")),
    "masked_lm": lambda: MaskedLM(BertBackbone.from_preset("bert_tiny")),
}
TASKS = ("causal_lm", "causal_lm_llama", "masked_lm")
BATCH, LENGTH, NUM_MASKED = 2, 8, 3


def make_inputs(model, batch=BATCH, length=LENGTH, seed=0) -> dict[str, np.ndarray]:
    """Random inputs for every input of `model`; row 1 ends in two padding tokens."""
    rng = np.random.default_rng(seed)
    vocab = getattr(model, "backbone", model).vocabulary_size
    padding_mask = np.ones((batch, length), "int32")
    padding_mask[1, -2:] = 0
    values = {
        "token_ids": rng.integers(1, vocab, (batch, length)),
        "padding_mask": padding_mask,
        "mask_positions": np.tile(np.arange(1, 1 + NUM_MASKED), (batch, 1)),
    }
    if isinstance(getattr(model, "backbone", model), BertBackbone):
        values["segment_ids"] = (np.arange(length) >= length // 2) * np.ones((batch, 1))
    else:  # packed GPT: two documents per row
        values["segment_ids"] = np.arange(length) * 2 // length * np.ones((batch, 1))
    return {key: values[key].astype("int32") for key in model.input}


def as_numpy(outputs):
    if isinstance(outputs, dict):
        return {key: keras.ops.convert_to_numpy(value) for key, value in outputs.items()}
    return keras.ops.convert_to_numpy(outputs)


def assert_outputs_close(a, b, atol=1e-5):
    a, b = as_numpy(a), as_numpy(b)
    if isinstance(a, dict):
        assert a.keys() == b.keys()
        for key in a:
            np.testing.assert_allclose(a[key], b[key], atol=atol, rtol=0, err_msg=key)
    else:
        np.testing.assert_allclose(a, b, atol=atol, rtol=0)


def expected_shapes(name) -> dict | tuple:
    if name == "bert":
        return {"sequence_output": (BATCH, LENGTH, 64), "pooled_output": (BATCH, 64)}
    if name.startswith("causal_lm"):
        return (BATCH, LENGTH, 1024)
    if name == "masked_lm":
        return (BATCH, NUM_MASKED, 1024)
    return (BATCH, LENGTH, 64)


# --- 1. Contracts ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", MODELS)
def test_output_shapes_and_dtypes(name):
    model = MODELS[name]()
    outputs = model(make_inputs(model))
    values = as_numpy(outputs)
    values = values if isinstance(values, dict) else {"outputs": values}
    expected = expected_shapes(name)
    expected = expected if isinstance(expected, dict) else {"outputs": expected}
    assert {key: value.shape for key, value in values.items()} == expected
    for value in values.values():
        assert value.dtype == np.float32
        assert np.isfinite(value).all()


def test_llama_preset_architecture():
    model = GPTBackbone.from_preset("llama_tiny")
    assert model.position_layer is None  # RoPE lives inside attention
    block = model.transformer_layers[0]
    assert isinstance(block.attention_norm, keras.layers.RMSNormalization)
    assert isinstance(model.final_norm, keras.layers.RMSNormalization)
    assert block.attention.rotary is not None
    # GQA: 4 query heads + 2 * 2 key/value heads of size 16, no biases.
    assert tuple(block.attention.qkv_dense.kernel.shape) == (64, (4 + 2 * 2) * 16)
    assert block.attention.qkv_dense.bias is None
    # SwiGLU: one fused (hidden, 2 * ff) kernel.
    assert tuple(block.feedforward.intermediate_dense.kernel.shape) == (64, 2 * 176)
    # Untied output projection: a separate (hidden, vocabulary) table.
    assert tuple(model.token_embedding.reverse_embeddings.shape) == (64, 1024)
    cache = model.init_cache(2, max_length=10)  # 2 layers of (key, value)
    assert [[tuple(c.shape) for c in pair] for pair in cache] == [[(2, 2, 10, 16)] * 2] * 2


@pytest.mark.parametrize("name", MODELS)
def test_config_round_trip(name):
    model = MODELS[name]()
    config = model.get_config()
    restored = type(model).from_config(config)
    assert restored.get_config() == config
    assert restored.count_params() == model.count_params()


@pytest.mark.parametrize("name", MODELS)
def test_keras_file_round_trip(name, tmp_path):
    model = MODELS[name]()
    inputs = make_inputs(model)
    path = tmp_path / f"{name}.keras"
    model.save(path)
    restored = keras.saving.load_model(path)
    assert type(restored) is type(model)
    assert restored.get_config() == model.get_config()
    assert_outputs_close(restored(inputs), model(inputs), atol=0)


def _targets(name, inputs):
    if name == "masked_lm":
        return np.take_along_axis(inputs["token_ids"], inputs["mask_positions"], axis=1)
    return np.roll(inputs["token_ids"], -1, axis=1)  # next token (last one is junk, fine here)


@pytest.mark.parametrize("name", TASKS)
def test_fit_step_changes_weights(name):
    model = MODELS[name]()
    inputs = make_inputs(model)
    model.compile(
        optimizer=keras.optimizers.Adam(1e-2),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    before = {v.path: v.numpy().copy() for v in model.trainable_variables}
    with warnings.catch_warnings():  # the pooler does not feed masked-token logits
        warnings.filterwarnings("ignore", r"Gradients do not exist for variables \['pooled_dense")
        history = model.fit(inputs, _targets(name, inputs), batch_size=BATCH, verbose=0)
    loss = history.history["loss"][0]
    assert np.isfinite(loss) and loss > 0
    unchanged = [v.path for v in model.trainable_variables if np.array_equal(v, before[v.path])]
    if name == "masked_lm":
        assert all("pooled_dense" in path for path in unchanged), unchanged
    else:
        assert unchanged == []


def test_from_preset_overrides():
    model = GPTBackbone.from_preset("llama_tiny", num_layers=1, vocabulary_size=50)
    assert (model.num_layers, len(model.transformer_layers)) == (1, 1)
    assert model.vocabulary_size == 50
    assert model.normalization == "rms_norm"  # the rest of the preset is kept
    bert = BertBackbone.from_preset("bert_tiny", dropout=0.0, max_sequence_length=16)
    assert bert.get_config()["dropout"] == 0.0
    assert tuple(bert.position_embedding.embeddings.shape) == (16, 64)


def test_from_preset_unknown_name_lists_names():
    with pytest.raises(ValueError, match="gpt_tiny.*llama_tiny|llama_tiny.*gpt_tiny") as info:
        GPTBackbone.from_preset("gpt_huge")
    assert "gpt_huge" in str(info.value)
    with pytest.raises(ValueError, match="bert_tiny"):  # presets of another family
        BertBackbone.from_preset("gpt_tiny")


# --- 2. Masks ---------------------------------------------------------------------------------


@pytest.mark.parametrize("preset", ["gpt_tiny", "llama_tiny"])
def test_gpt_is_causal(preset):
    model = GPTBackbone.from_preset(preset)
    inputs = make_inputs(model, length=10)
    base = as_numpy(model(inputs))
    for t in (0, 4, 8):
        changed = dict(inputs, token_ids=inputs["token_ids"].copy())
        changed["token_ids"][:, t + 1 :] = (changed["token_ids"][:, t + 1 :] + 7) % 1024
        out = as_numpy(model(changed))
        np.testing.assert_allclose(out[:, : t + 1], base[:, : t + 1], atol=1e-5, rtol=0)
        assert np.abs(out[:, t + 1 :] - base[:, t + 1 :]).max() > 1e-3  # later ones do move


@pytest.mark.parametrize("preset", ["gpt_tiny", "llama_tiny"])
def test_packed_documents_do_not_see_each_other(preset):
    model = GPTBackbone.from_preset(preset, packed_sequences=True)
    inputs = make_inputs(model)  # documents 0 and 1 of 4 tokens each
    second = inputs["segment_ids"][0] == 1
    base = as_numpy(model(inputs))
    changed = dict(inputs, token_ids=inputs["token_ids"].copy())
    changed["token_ids"][:, ~second] = (changed["token_ids"][:, ~second] + 5) % 1024
    out = as_numpy(model(changed))
    np.testing.assert_allclose(out[:, second], base[:, second], atol=1e-5, rtol=0)
    assert np.abs(out[:, ~second] - base[:, ~second]).max() > 1e-3
    # Its positions restart at 0: document 2 alone gives the same outputs.
    alone = GPTBackbone.from_preset(preset)
    alone.set_weights(model.get_weights())
    ids = inputs["token_ids"][:, second]
    out_alone = as_numpy(alone({"token_ids": ids, "padding_mask": np.ones_like(ids)}))
    np.testing.assert_allclose(out_alone[0], base[0, second], atol=1e-5, rtol=0)


def test_bert_ignores_padded_tokens():
    model = BertBackbone.from_preset("bert_tiny")
    inputs = make_inputs(model, length=10)
    inputs["padding_mask"][:, 6:] = 0
    base = as_numpy(model(inputs))
    changed = dict(inputs, token_ids=inputs["token_ids"].copy())
    changed["token_ids"][:, 6:] = (changed["token_ids"][:, 6:] + 11) % 1024
    out = as_numpy(model(changed))
    np.testing.assert_allclose(
        out["sequence_output"][:, :6], base["sequence_output"][:, :6], atol=1e-5, rtol=0
    )
    np.testing.assert_allclose(out["pooled_output"], base["pooled_output"], atol=1e-5, rtol=0)
    # Without the mask the same change does move the other positions.
    inputs["padding_mask"][:] = 1
    changed["padding_mask"] = inputs["padding_mask"]
    diff = as_numpy(model(changed))["sequence_output"] - as_numpy(model(inputs))["sequence_output"]
    assert np.abs(diff[:, :6]).max() > 1e-3


# --- 3. KV cache ------------------------------------------------------------------------------


def _decode_with_cache(call, model, token_ids, prompt_length, padding_mask=None):
    """Prompt in one call, then one token per call; returns the concatenated outputs."""
    batch, length = token_ids.shape
    cache = model.init_cache(batch, max_length=length)
    out, cache = call(token_ids[:, :prompt_length], cache, 0, padding_mask)
    outputs = [out]
    for t in range(prompt_length, length):
        out, cache = call(token_ids[:, t : t + 1], cache, t, padding_mask)
        outputs.append(out)
    return np.concatenate([as_numpy(o) for o in outputs], axis=1), cache


@pytest.mark.parametrize("preset", ["gpt_tiny", "llama_tiny"])
def test_backbone_cache_equals_full_forward(preset):
    model = GPTBackbone.from_preset(preset)
    inputs = make_inputs(model, length=10)
    inputs["padding_mask"][:] = 1
    full = as_numpy(model(inputs))
    cached, cache = _decode_with_cache(model.call_with_cache, model, inputs["token_ids"], 4)
    np.testing.assert_allclose(cached, full, atol=1e-5, rtol=0)
    shapes = tf.nest.map_structure(lambda c: tuple(c.shape), cache)
    assert shapes == tf.nest.map_structure(lambda c: tuple(c.shape), model.init_cache(BATCH, 10))


def test_backbone_cache_with_left_padding():
    model = GPTBackbone.from_preset("gpt_tiny")
    inputs = make_inputs(model, length=10)
    mask = np.ones((BATCH, 10), "int32")
    mask[1, :3] = 0  # row 1 is left padded
    full = as_numpy(model({"token_ids": inputs["token_ids"], "padding_mask": mask}))
    cached, _ = _decode_with_cache(model.call_with_cache, model, inputs["token_ids"], 5, mask)
    assert np.all(np.isfinite(cached))
    real = mask.astype(bool)
    np.testing.assert_allclose(cached[real], full[real], atol=1e-5, rtol=0)


@pytest.mark.parametrize("preset", ["gpt_tiny", "llama_tiny"])
def test_causal_lm_cache_logits_equal_full_logits(preset):
    lm = CausalLM(GPTBackbone.from_preset(preset))
    inputs = make_inputs(lm, length=9)
    inputs["padding_mask"][:] = 1
    full = as_numpy(lm(inputs))
    cached, _ = _decode_with_cache(lm.call_with_cache, lm.backbone, inputs["token_ids"], 3)
    assert cached.shape == full.shape == (BATCH, 9, 1024)
    np.testing.assert_allclose(cached, full, atol=1e-5, rtol=0)


def test_causal_lm_logits_at_chosen_positions():
    lm = CausalLM(GPTBackbone.from_preset("gpt_tiny"))
    inputs = make_inputs(lm, length=6)
    positions = np.arange(BATCH) % 6
    cache = lm.backbone.init_cache(BATCH, max_length=6)
    full, _ = lm.call_with_cache(inputs["token_ids"], cache, 0)
    chosen, _ = lm.call_with_cache(inputs["token_ids"], cache, 0, logit_positions=positions)
    want = as_numpy(full)[np.arange(BATCH), positions]
    np.testing.assert_allclose(as_numpy(chosen), want, atol=1e-5, rtol=0)


def test_bert_tasks_run_the_last_block_at_read_positions_only():
    """Masked LM, pretraining and [CLS] classification equal heads on the full pass."""
    backbone = BertBackbone.from_preset("bert_tiny")
    masked_lm = MaskedLM(backbone)
    inputs = make_inputs(masked_lm)
    positions = inputs["mask_positions"]
    full = backbone({key: inputs[key] for key in backbone.input})
    rows = np.take_along_axis(as_numpy(full["sequence_output"]), positions[:, :, None], axis=1)
    assert_outputs_close(backbone.sequence_output_at(inputs, positions), rows)
    assert_outputs_close(masked_lm(inputs), masked_lm.mlm_head(full["sequence_output"], positions))
    pretrainer = BertPretrainer(backbone)
    got = pretrainer(inputs)
    assert_outputs_close(got["mlm"], pretrainer.mlm_head(full["sequence_output"], positions))
    assert_outputs_close(got["nsp"], pretrainer.nsp_head(full["pooled_output"]))
    classifier = TextClassifier(backbone, num_classes=3)
    want = classifier.output_dense(full["pooled_output"])
    assert_outputs_close(classifier({key: inputs[key] for key in backbone.input}), want)


def test_cache_step_in_tf_function_with_tensor_index():
    """Generation loops compile one step with a tensor `cache_update_index`."""
    lm = CausalLM(GPTBackbone.from_preset("llama_tiny"))
    inputs = make_inputs(lm, length=6)
    inputs["padding_mask"][:] = 1
    full = as_numpy(lm(inputs))
    step = tf.function(lambda ids, cache, index: lm.call_with_cache(ids, cache, index))
    cache = lm.backbone.init_cache(BATCH, max_length=6)
    outputs = []
    for t in range(6):
        out, cache = step(inputs["token_ids"][:, t : t + 1], cache, tf.constant(t))
        outputs.append(as_numpy(out))
    np.testing.assert_allclose(np.concatenate(outputs, axis=1), full, atol=1e-5, rtol=0)


# --- 4. Argument errors -----------------------------------------------------------------------


@pytest.mark.parametrize("cls", [BertBackbone, GPTBackbone])
def test_hidden_dim_not_divisible_by_heads(cls):
    with pytest.raises(ValueError, match=r"`hidden_dim`.*`num_heads`.*hidden_dim=30, num_heads=4"):
        cls(vocabulary_size=10, num_layers=1, num_heads=4, hidden_dim=30, intermediate_dim=8)


SIZES = ["vocabulary_size", "num_layers", "num_heads", "hidden_dim", "intermediate_dim"]


@pytest.mark.parametrize("cls", [BertBackbone, GPTBackbone])
@pytest.mark.parametrize("argument", [*SIZES, "max_sequence_length"])
@pytest.mark.parametrize("value", [0, -2])
def test_non_positive_sizes(cls, argument, value):
    kwargs = dict(vocabulary_size=10, num_layers=1, num_heads=2, hidden_dim=8, intermediate_dim=8)
    kwargs[argument] = value
    with pytest.raises(ValueError, match=rf"`{argument}`.*{value}"):
        cls(**kwargs)


@pytest.mark.parametrize("name", ["bert", "gpt", "causal_lm", "masked_lm"])
@pytest.mark.parametrize("bad_id", [1024, -1])
def test_token_ids_out_of_range(name, bad_id):
    model = MODELS[name]()
    inputs = make_inputs(model)
    inputs["token_ids"][1, 3] = bad_id
    with pytest.raises(ValueError, match=rf"`token_ids`.*1024.*{bad_id}"):
        model(inputs)
