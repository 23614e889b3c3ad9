"""Tests for tfllm.layers: numbers against numpy references, KV cache, contracts, errors."""

import dataclasses
import inspect
import json
from collections.abc import Callable

import keras
import numpy as np
import pytest
import tensorflow as tf

from tests import helpers
from tfllm.layers import (
    Dropout,
    LayerNormalization,
    MaskedLMHead,
    MultiHeadAttention,
    PositionEmbedding,
    RotaryEmbedding,
    SinusoidalPositionEncoding,
    TokenEmbedding,
    TransformerDecoderBlock,
    TransformerEncoderBlock,
    compute_attention_mask,
)
from tfllm.layers import attention as attention_module
from tfllm.layers import dropout as dropout_module
from tfllm.layers import embedding as embedding_module
from tfllm.layers import heads as heads_module
from tfllm.layers import normalization as normalization_module
from tfllm.layers import transformer as transformer_module
from tfllm.layers.activations import training_gelu
from tfllm.layers.embedding import segment_positions
from tfllm.layers.transformer import FeedForward

B, T, D = 3, 8, 16  # batch, length, hidden_dim of the numeric tests
LENGTHS = [8, 5, 2]  # unpadded lengths of the B rows (right padding)
SEGMENTS = np.array(  # packed documents, one id per token
    [[1, 1, 1, 2, 2, 2, 2, 2], [1, 1, 1, 1, 1, 1, 1, 1], [3, 3, 4, 4, 4, 5, 5, 5]], "int32"
)
TOL = dict(atol=1e-5, rtol=1e-5)


@pytest.fixture
def rng():
    return np.random.default_rng(0)


@pytest.fixture
def x(rng):
    return rng.normal(size=(B, T, D)).astype("float32")


# --- compute_attention_mask: known answers ------------------------------------------------


def _mask(rows):
    return np.array(rows, bool)


@pytest.mark.parametrize(
    "kwargs, expected",
    [
        pytest.param(
            dict(query_length=3, key_length=3, use_causal_mask=True),
            _mask([[[1, 0, 0], [1, 1, 0], [1, 1, 1]]]),
            id="causal",
        ),
        pytest.param(
            # Two new queries at positions 2 and 3 of a 5-slot cache.
            dict(query_length=2, key_length=5, use_causal_mask=True, query_start=2),
            _mask([[[1, 1, 1, 0, 0], [1, 1, 1, 1, 0]]]),
            id="causal_query_start",
        ),
        pytest.param(
            dict(query_length=2, key_length=3, padding_mask=np.array([[1, 1, 0], [1, 0, 0]])),
            _mask([[[1, 1, 0], [1, 1, 0]], [[1, 0, 0], [1, 0, 0]]]),
            id="padding",
        ),
        pytest.param(
            dict(
                query_length=3,
                key_length=3,
                padding_mask=np.array([[1, 1, 0]]),
                use_causal_mask=True,
            ),
            _mask([[[1, 0, 0], [1, 1, 0], [1, 1, 0]]]),
            id="padding_causal",
        ),
        pytest.param(
            dict(
                query_length=4,
                key_length=4,
                segment_ids=np.array([[1, 1, 2, 2]]),
                use_causal_mask=True,
            ),
            _mask([[[1, 0, 0, 0], [1, 1, 0, 0], [0, 0, 1, 0], [0, 0, 1, 1]]]),
            id="segments_causal",
        ),
        pytest.param(
            # Queries 3 and 4 of a packed row, decoded with a cache: ids come from the slice.
            dict(
                query_length=2,
                key_length=5,
                segment_ids=np.array([[1, 1, 2, 2, 2]]),
                use_causal_mask=True,
                query_start=3,
            ),
            _mask([[[0, 0, 1, 1, 0], [0, 0, 1, 1, 1]]]),
            id="segments_query_start",
        ),
        pytest.param(
            dict(
                query_length=2,
                key_length=2,
                attention_mask=np.array([[[1, 0], [1, 1]], [[0, 1], [1, 1]]]),
                padding_mask=np.array([[1, 1], [1, 0]]),
            ),
            _mask([[[1, 0], [1, 1]], [[0, 0], [1, 0]]]),
            id="attention_and_padding",
        ),
    ],
)
def test_compute_attention_mask_known_answers(kwargs, expected):
    mask = compute_attention_mask(kwargs.pop("query_length"), kwargs.pop("key_length"), **kwargs)
    assert mask.dtype == tf.bool
    batch = max(expected.shape[0], np.shape(mask)[0])
    got = np.broadcast_to(np.asarray(mask), (batch, *expected.shape[1:]))
    np.testing.assert_array_equal(got, np.broadcast_to(expected, got.shape))


def test_compute_attention_mask_without_masks_is_none():
    assert compute_attention_mask(3, 3) is None


# --- MultiHeadAttention against numpy ------------------------------------------------------


def _masks(kind, rng):
    """(layer call kwargs, numpy boolean mask broadcastable to (B, T, T)) for one mask kind."""
    pad = helpers.padding_mask(LENGTHS, T)
    causal = helpers.causal_mask(T)
    if kind == "none":
        return {}, None
    if kind == "padding":
        return {"padding_mask": pad.astype("int32")}, pad[:, None, :]
    if kind == "causal":
        return {"use_causal_mask": True}, causal
    if kind == "padding_causal":
        return {"padding_mask": pad, "use_causal_mask": True}, pad[:, None, :] & causal
    if kind == "segments_causal":
        same_doc = SEGMENTS[:, :, None] == SEGMENTS[:, None, :]
        return {"segment_ids": SEGMENTS, "use_causal_mask": True}, same_doc & causal
    if kind == "attention_mask_padding":
        attention = rng.random((B, T, T)) < 0.5
        attention[:, :, 0] = True  # every query keeps one visible key
        return {"attention_mask": attention, "padding_mask": pad}, attention & pad[:, None, :]
    raise AssertionError(kind)


MASK_KINDS = [
    "none",
    "padding",
    "causal",
    "padding_causal",
    "segments_causal",
    "attention_mask_padding",
]


def _attention(seed=0, **kwargs):
    layer = MultiHeadAttention(**{"num_heads": 2, **kwargs})
    layer.build((None, None, D))
    helpers.randomize_weights(layer, seed)
    return layer


@pytest.mark.parametrize("kind", MASK_KINDS)
def test_attention_masks_match_numpy(kind, x, rng):
    layer = _attention()
    call_kwargs, mask = _masks(kind, rng)
    want = helpers.attention(layer, x, mask)
    np.testing.assert_allclose(layer(x, **call_kwargs), want, **TOL)


@pytest.mark.parametrize(
    "kwargs",
    [
        pytest.param(dict(num_heads=4, num_key_value_heads=1), id="gqa_kv1"),
        pytest.param(dict(num_heads=4, num_key_value_heads=2), id="gqa_kv2"),
        pytest.param(dict(num_heads=4, num_key_value_heads=4), id="kv_equals_heads"),
        pytest.param(dict(num_heads=2, head_dim=6, use_bias=False), id="head_dim_6_no_bias"),
        pytest.param(
            dict(num_heads=4, num_key_value_heads=2, rope_max_wavelength=100.0), id="rope"
        ),
        pytest.param(
            dict(num_heads=2, rope_max_wavelength=10000.0, rope_scaling_factor=4.0),
            id="rope_scaled",
        ),
    ],
)
@pytest.mark.parametrize("kind", ["padding_causal", "segments_causal"])
def test_attention_variants_match_numpy(kwargs, kind, x, rng):
    layer = _attention(**kwargs)
    call_kwargs, mask = _masks(kind, rng)
    want = helpers.attention(layer, x, mask)
    np.testing.assert_allclose(layer(x, **call_kwargs), want, **TOL)


def test_attention_padded_keys_have_no_influence(x, rng):
    layer = _attention()
    call_kwargs, _ = _masks("padding_causal", rng)
    noisy = x.copy()
    for row, length in enumerate(LENGTHS):
        noisy[row, length:] = 100.0 * rng.normal(size=(T - length, D))
    got, got_noisy = layer(x, **call_kwargs), layer(noisy, **call_kwargs)
    for row, length in enumerate(LENGTHS):  # outputs at real tokens are unchanged
        np.testing.assert_allclose(got_noisy[row, :length], got[row, :length], **TOL)
    assert not np.allclose(got_noisy[2, 2:], got[2, 2:])  # ... but padding outputs do change


# --- dropout -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "cls, kwargs",
    [
        (MultiHeadAttention, dict(num_heads=2)),
        (TransformerEncoderBlock, dict(num_heads=2, intermediate_dim=24)),
        (TransformerDecoderBlock, dict(num_heads=2, intermediate_dim=24)),
    ],
    ids=["attention", "encoder", "decoder"],
)
def test_dropout_is_off_at_inference(cls, kwargs, x):
    with_dropout, without = cls(dropout=0.5, **kwargs), cls(dropout=0.0, **kwargs)
    with_dropout.build(x.shape)
    without.build(x.shape)
    helpers.randomize_weights(with_dropout)
    without.set_weights(with_dropout.get_weights())
    want = without(x)
    np.testing.assert_allclose(with_dropout(x, training=False), want, **TOL)
    np.testing.assert_allclose(with_dropout(x), want, **TOL)  # training=None: inference
    trained = np.asarray(with_dropout(x, training=True))
    assert np.isfinite(trained).all()
    assert np.abs(trained - want).max() > 1e-2


def test_attention_dropout_path_with_tiny_rate_matches_numpy(x, rng):
    """The separate dropout code path (training=True, rate > 0) masks and scales correctly."""
    layer = _attention(num_heads=4, num_key_value_heads=2, dropout=1e-7)
    call_kwargs, mask = _masks("padding_causal", rng)
    want = helpers.attention(layer, x, mask)
    np.testing.assert_allclose(layer(x, training=True, **call_kwargs), want, **TOL)


def test_attention_dropout_is_unbiased(rng):
    """Dropped probabilities are rescaled: averaged over many draws, output = inference."""
    layer = _attention(dropout=0.5)
    call_kwargs = {"use_causal_mask": True, "padding_mask": np.array([[1] * 6 + [0, 0]])}
    one = rng.normal(size=(1, T, D)).astype("float32")
    want = np.asarray(layer(one, **call_kwargs))
    draws = 10000  # one batch row per independent dropout draw
    samples = np.asarray(layer(np.repeat(one, draws, axis=0), training=True, **call_kwargs))
    assert np.isfinite(samples).all()
    assert np.abs(samples[0] - want[0]).max() > 1e-2  # one draw differs ...
    # ... their mean does not: within 5 standard errors everywhere (128 values).
    standard_error = samples.std(0) / np.sqrt(draws)
    assert (np.abs(samples.mean(0) - want[0]) < 5 * standard_error + 1e-4).all()


# --- KV cache ------------------------------------------------------------------------------


def _decode(step, x, chunks, cache):
    """Feed `x` through `step(x_chunk, cache, index)` chunk by chunk; concatenated outputs."""
    outputs, start = [], 0
    for size in chunks:
        out, cache = step(x[:, start : start + size], cache, tf.constant(start, "int32"))
        outputs.append(np.asarray(out))
        start += size
    assert start == x.shape[1]
    return np.concatenate(outputs, axis=1), np.stack([np.asarray(c) for c in cache], axis=1)


def _zero_cache(kv_heads, length, head_size):
    """A `(key, value)` pair of zero caches `(B, kv_heads, length, head_size)`."""
    return (tf.zeros((B, kv_heads, length, head_size)),) * 2


def _stepper(layer, graph, cache_spec, **call_kwargs):
    """A decoding step `(inputs, cache, index) -> (outputs, cache)`, eager or traced."""

    def step(inputs, cache, index):
        return layer(inputs, cache=cache, cache_update_index=index, **call_kwargs)

    if not graph:
        return step
    signature = [
        tf.TensorSpec((None, None, D), "float32"),
        (tf.TensorSpec(cache_spec, "float32"),) * 2,
        tf.TensorSpec((), "int32"),
    ]
    return tf.function(step, input_signature=signature, jit_compile=False)


CHUNKS = [pytest.param([1] * T, id="one_by_one"), pytest.param([5, 1, 1, 1], id="prompt5")]
GRAPH = [pytest.param(False, id="eager"), pytest.param(True, id="graph")]


@pytest.mark.parametrize("chunks", CHUNKS)
@pytest.mark.parametrize("graph", GRAPH)
@pytest.mark.parametrize(
    "kwargs",
    [
        pytest.param(dict(num_heads=2), id="plain"),
        pytest.param(dict(num_heads=4, num_key_value_heads=1), id="gqa"),
        pytest.param(
            dict(num_heads=4, num_key_value_heads=2, rope_max_wavelength=100.0), id="rope"
        ),
    ],
)
def test_attention_kv_cache_matches_full_causal_pass(kwargs, graph, chunks, x):
    layer = _attention(**kwargs)
    kv_heads, head_size = layer.num_key_value_heads or layer.num_heads, D // layer.num_heads
    want = np.asarray(layer(x, use_causal_mask=True))
    step = _stepper(layer, graph, (None, kv_heads, None, head_size), use_causal_mask=True)
    cache = _zero_cache(kv_heads, T + 3, head_size)  # 3 unused slots must stay hidden
    got, cache = _decode(step, x, chunks, cache)  # cache (B, 2, K, S, hs)
    np.testing.assert_allclose(got, want, **TOL)
    assert (np.abs(cache[:, :, :, :T]).max(axis=(0, 1, 2, 4)) > 0).all()  # filled slots ...
    np.testing.assert_array_equal(cache[:, :, :, T:], 0.0)  # ... and untouched ones
    if graph:
        assert step.experimental_get_tracing_count() == 1  # one trace for every chunk length


@pytest.mark.parametrize("chunks", CHUNKS)
@pytest.mark.parametrize("graph", GRAPH)
@pytest.mark.parametrize(
    "kwargs",
    [
        pytest.param(dict(), id="gpt2"),
        pytest.param(
            dict(
                num_heads=4,
                num_key_value_heads=2,
                normalization="rms_norm",
                activation="swiglu",
                use_bias=False,
                rope_max_wavelength=10000.0,
            ),
            id="llama",
        ),
    ],
)
def test_decoder_kv_cache_matches_full_pass(kwargs, graph, chunks, x):
    block = TransformerDecoderBlock(**{"num_heads": 2, "intermediate_dim": 24, **kwargs})
    block.build(x.shape)
    helpers.randomize_weights(block)
    kv_heads = kwargs.get("num_key_value_heads") or block.num_heads
    head_size = D // block.num_heads
    step = _stepper(block, graph, (None, kv_heads, None, head_size))
    got, cache = _decode(step, x, chunks, _zero_cache(kv_heads, T + 2, head_size))
    np.testing.assert_allclose(got, block(x), **TOL)
    np.testing.assert_array_equal(cache[:, :, :, T:], 0.0)


# --- embeddings ----------------------------------------------------------------------------


def test_token_embedding_lookup_and_reverse(x):
    layer = TokenEmbedding(input_dim=20, output_dim=D)
    ids = np.array([[0, 5, 19], [3, 3, 7]])
    out = np.asarray(layer(ids))
    table = helpers.numpy(layer.embeddings)
    np.testing.assert_array_equal(out, table[ids])
    np.testing.assert_allclose(layer(x, reverse=True), x @ table.T, **TOL)


@pytest.mark.parametrize("start", [0, 3])
def test_position_embedding_slices_its_table(start, x):
    layer = PositionEmbedding(sequence_length=12)
    out = np.asarray(layer(x[:, :5], start_index=start))
    np.testing.assert_array_equal(out, helpers.numpy(layer.embeddings)[None, start : start + 5])


@pytest.mark.parametrize("dim, wavelength", [(8, 10000.0), (6, 100.0), (5, 10000.0)])
@pytest.mark.parametrize("start", [0, 5])
def test_sinusoidal_encoding_matches_paper_formula(dim, wavelength, start):
    layer = SinusoidalPositionEncoding(max_wavelength=wavelength)
    out = layer(np.zeros((2, 10, dim), "float32"), start_index=start)
    assert tuple(out.shape) == (1, 10, dim)
    np.testing.assert_allclose(out[0], helpers.sinusoidal(10, dim, wavelength, start), **TOL)


@pytest.mark.parametrize("start", [0, 4])
@pytest.mark.parametrize("scaling", [1.0, 2.0])
def test_rotary_matches_numpy_rotate_half(start, scaling, rng):
    inputs = rng.normal(size=(2, 6, 3, 8)).astype("float32")
    layer = RotaryEmbedding(max_wavelength=100.0, scaling_factor=scaling)
    want = helpers.rope(inputs, np.arange(6) + start, 100.0, scaling)
    np.testing.assert_allclose(layer(inputs, start_index=start), want, **TOL)


def test_rotary_is_a_rotation_with_relative_dot_products(rng):
    layer = RotaryEmbedding(max_wavelength=100.0)
    q, k = rng.normal(size=(2, 8)).astype("float32")
    rotated_q = np.asarray(layer(np.broadcast_to(q, (1, 10, 1, 8))))[0, :, 0]  # (T, hs)
    rotated_k = np.asarray(layer(np.broadcast_to(k, (1, 10, 1, 8))))[0, :, 0]
    np.testing.assert_allclose(np.linalg.norm(rotated_q, axis=-1), np.linalg.norm(q), rtol=1e-5)
    dots = rotated_q @ rotated_k.T  # dots[m, n] = <R(m) q, R(n) k>
    # Depends on m - n only: every diagonal of the matrix is constant ...
    np.testing.assert_allclose(dots[1:, 1:], dots[:-1, :-1], atol=1e-5)
    # ... and not trivially: different offsets give different products.
    assert len(np.unique(np.round(dots[0], 4))) == 10


# --- position_ids: left-padded rows ------------------------------------------------------

LEFT_PADDED_IDS = np.array([[0, 0, 0, 1, 2, 3], [0, 1, 2, 3, 4, 5]])  # row 0: 2 pads, 4 tokens


@pytest.mark.parametrize("layer_id", ["position_embedding", "sinusoidal", "rotary"])
def test_position_layers_use_position_ids(layer_id, rng):
    inputs = rng.normal(size=(2, 6, 2, 8) if layer_id == "rotary" else (2, 6, 8))
    inputs = inputs.astype("float32")
    if layer_id == "position_embedding":
        layer = PositionEmbedding(sequence_length=10)
        got = layer(inputs, position_ids=LEFT_PADDED_IDS)
        want = helpers.numpy(layer.embeddings)[LEFT_PADDED_IDS]
    elif layer_id == "sinusoidal":
        got = SinusoidalPositionEncoding()(inputs, position_ids=LEFT_PADDED_IDS)
        want = helpers.sinusoidal(10, 8)[LEFT_PADDED_IDS]
    else:
        got = RotaryEmbedding(100.0)(inputs, position_ids=LEFT_PADDED_IDS)
        want = helpers.rope(inputs, LEFT_PADDED_IDS, 100.0)
    assert tuple(got.shape) == want.shape
    np.testing.assert_allclose(got, want, **TOL)


def _positions_by_loop(segment_ids):
    """Reference: count up within a run of equal ids, restart at 0 where the id changes."""
    positions = np.zeros_like(segment_ids)
    for b, row in enumerate(segment_ids):
        for t in range(1, len(row)):
            positions[b, t] = positions[b, t - 1] + 1 if row[t] == row[t - 1] else 0
    return positions


@pytest.mark.parametrize("graph", [False, True])
def test_segment_positions_restart_at_every_document(graph, rng):
    segment_ids = np.array([[1, 1, 1, 2, 2, 3, 0, 0], [0, 0, 1, 1, 1, 1, 1, 1], [1] * 8])
    random_runs = np.cumsum(rng.random((4, 8)) < 0.4, axis=1)  # runs of random lengths
    segment_ids = np.concatenate([segment_ids, random_runs]).astype("int32")
    function = tf.function(segment_positions) if graph else segment_positions
    got = helpers.numpy(function(segment_ids))
    np.testing.assert_array_equal(got, _positions_by_loop(segment_ids))
    assert got[0].tolist() == [0, 1, 2, 0, 1, 0, 0, 1]


def _left_pad(x, pads):
    """Row `x` (1, L, D) left-padded with `pads` noise tokens; its mask and position ids."""
    noise = np.random.default_rng(1).normal(size=(1, pads, x.shape[-1])).astype("float32")
    mask = np.arange(pads + x.shape[1]) >= pads
    position_ids = np.maximum(np.cumsum(mask) - 1, 0)
    return np.concatenate([noise, x], axis=1), mask[None], position_ids[None]


@pytest.mark.parametrize("block", [False, True], ids=["attention", "decoder"])
def test_left_padding_with_position_ids_matches_unpadded_row(block, x):
    kwargs = dict(num_heads=4, num_key_value_heads=2, rope_max_wavelength=100.0)
    if block:
        layer = TransformerDecoderBlock(intermediate_dim=24, **kwargs)
        layer.build(x.shape)
        helpers.randomize_weights(layer)
        causal = {}
    else:
        layer, causal = _attention(**kwargs), {"use_causal_mask": True}
    row = x[:1, :5]
    padded, mask, position_ids = _left_pad(row, 3)
    got = layer(padded, padding_mask=mask, position_ids=position_ids, **causal)
    np.testing.assert_allclose(got[:, 3:], layer(row, **causal), **TOL)


def test_attention_position_ids_match_numpy(x, rng):
    layer = _attention(num_heads=4, num_key_value_heads=2, rope_max_wavelength=100.0)
    position_ids = np.sort(rng.integers(0, 20, size=(B, T)), axis=1)  # arbitrary, per row
    call_kwargs, mask = _masks("padding_causal", rng)
    want = helpers.attention(layer, x, mask, positions=position_ids)
    np.testing.assert_allclose(layer(x, position_ids=position_ids, **call_kwargs), want, **TOL)


@pytest.mark.parametrize("chunks", CHUNKS)
def test_decoder_kv_cache_with_position_ids_matches_full_pass(chunks, x):
    block = TransformerDecoderBlock(2, 24, rope_max_wavelength=100.0)
    block.build(x.shape)
    helpers.randomize_weights(block)
    lengths = np.array([8, 5, 3])  # left padding: row b starts at T - lengths[b]
    mask = np.arange(T)[None, :] >= (T - lengths)[:, None]
    position_ids = np.maximum(np.cumsum(mask, axis=1) - 1, 0)
    want = np.asarray(block(x, padding_mask=mask, position_ids=position_ids))

    def step(inputs, cache, index):
        ids = position_ids[:, int(index) : int(index) + inputs.shape[1]]
        return block(
            inputs, padding_mask=mask, position_ids=ids, cache=cache, cache_update_index=index
        )

    got, _ = _decode(step, x, chunks, _zero_cache(2, T, D // 2))
    np.testing.assert_allclose(got[mask], want[mask], **TOL)  # real tokens only


# --- feed-forward, blocks and heads against numpy ------------------------------------------


@pytest.mark.parametrize("activation", ["gelu", "gelu_approximate", "relu", "silu", "swiglu"])
def test_feedforward_matches_numpy(activation, x):
    layer = FeedForward(24, activation)
    layer.build(x.shape)
    helpers.randomize_weights(layer)
    np.testing.assert_allclose(layer(x), helpers.feedforward(layer, x), **TOL)
    np.testing.assert_allclose(layer(x, training=True), helpers.feedforward(layer, x), **TOL)


@pytest.mark.parametrize(
    "kwargs",
    [
        pytest.param({}, id="defaults"),
        pytest.param(dict(axis=1), id="other_axis_uses_keras"),
        pytest.param(dict(center=False), id="no_center_uses_keras"),
    ],
)
@pytest.mark.parametrize("dtype, tol", [("float32", 1e-5), ("mixed_bfloat16", 2e-2)])
def test_layer_norm_matches_keras_and_its_gradients(kwargs, dtype, tol, x, rng):
    ours = LayerNormalization(epsilon=1e-3, dtype=dtype, **kwargs)
    theirs = keras.layers.LayerNormalization(epsilon=1e-3, dtype=dtype, **kwargs)
    for layer in (ours, theirs):
        layer.build(x.shape)
        helpers.randomize_weights(layer)  # the same seed: the same gamma and beta
    weight = tf.constant(rng.normal(size=x.shape), "float32")
    inputs = tf.constant(3 * x + 1)
    results = []
    for layer in (ours, theirs):
        with tf.GradientTape() as tape:
            tape.watch(inputs)
            outputs = layer(inputs)
            loss = tf.reduce_sum(tf.cast(outputs, "float32") * weight)
        results.append([outputs, *tape.gradient(loss, [inputs, *layer.trainable_variables])])
    assert results[0][0].dtype == results[1][0].dtype
    for got, want in zip(*results, strict=True):
        got, want = np.asarray(tf.cast(got, "float32")), np.asarray(tf.cast(want, "float32"))
        np.testing.assert_allclose(got, want, atol=tol * max(1, np.abs(want).max()), rtol=tol)


@pytest.mark.parametrize("rate", [0.1, 0.5])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_dropout_keeps_the_rate_and_the_expectation(rate, dtype):
    layer = Dropout(rate, seed=3)
    x = tf.cast(tf.fill((301, 1001), 2.0), dtype)  # odd size: the last 16-bit draw is unused
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = layer(x, training=True)
        loss = tf.reduce_sum(tf.cast(y, "float32") * 3.0)
    y = np.asarray(tf.cast(y, "float32"))
    kept = y != 0
    scale = 65536 / (65536 - round(rate * 65536))
    np.testing.assert_allclose(y[kept], 2.0 * scale, rtol=1e-2 if dtype == "bfloat16" else 1e-6)
    assert abs(1 - kept.mean() - rate) < 4 * np.sqrt(rate * (1 - rate) / kept.size)
    assert abs(y.mean() - 2.0) < 0.01  # unbiased
    grad = np.asarray(tf.cast(tape.gradient(loss, x), "float32"))
    np.testing.assert_allclose(grad, 3.0 * y / 2.0, rtol=1e-2)  # dy * mask
    again = np.asarray(tf.cast(layer(x, training=True), "float32"))
    assert (again != 0).mean() > 0 and not np.array_equal(again != 0, kept)  # new draws


def test_dropout_is_identity_unless_training_and_keeps_keras_paths():
    x = tf.ones((4, 6))
    np.testing.assert_array_equal(Dropout(0.5)(x), x)
    np.testing.assert_array_equal(Dropout(0.0)(x, training=True), x)
    rows = np.asarray(Dropout(0.5, noise_shape=(4, 1), seed=0)(x, training=True))
    assert all(len(set(row)) == 1 for row in rows)  # Keras's noise_shape broadcast


@pytest.mark.parametrize("approximate", [False, True], ids=["exact", "tanh"])
@pytest.mark.parametrize("dtype, tol", [("float32", 1e-5), ("bfloat16", 2e-2)])
def test_training_gelu_matches_tensorflow_gelu_and_gradient(approximate, dtype, tol, rng):
    x = tf.constant(4 * rng.normal(size=(3, 5, 7)), dtype)
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(x)
        got = training_gelu(x, approximate=approximate)
        want = tf.nn.gelu(tf.cast(x, "float32"), approximate=approximate)
        got_sum, want_sum = tf.reduce_sum(got * x), tf.reduce_sum(want * tf.cast(x, "float32"))
    assert got.dtype == x.dtype
    close = dict(atol=tol, rtol=tol)
    np.testing.assert_allclose(tf.cast(got, "float32"), want, **close)
    got_grad = tf.cast(tape.gradient(got_sum, x), "float32")
    np.testing.assert_allclose(got_grad, tape.gradient(want_sum, x), **close)


def _encoder_reference(block, x, mask):
    """Post-norm encoder block in numpy: `h = LN(x + MHA(x)); LN(h + FFN(h))`."""
    h = x + helpers.attention(block.attention, x, mask)
    h = helpers.normalize("layer_norm", block.attention_norm, h)
    h = h + helpers.feedforward(block.feedforward, h)
    return helpers.normalize("layer_norm", block.feedforward_norm, h)


@pytest.mark.parametrize("activation", ["gelu", "relu"])
def test_encoder_block_matches_numpy_post_norm(activation, x, rng):
    block = TransformerEncoderBlock(2, 24, activation=activation, layer_norm_epsilon=1e-6)
    block.build(x.shape)
    helpers.randomize_weights(block)
    call_kwargs, mask = _masks("attention_mask_padding", rng)
    want = _encoder_reference(block, x, mask)
    np.testing.assert_allclose(block(x, **call_kwargs), want, atol=1e-4, rtol=1e-4)


# Two query rows per batch row, in any order, repeats allowed.
QUERY_POSITIONS = np.array([[0, 5], [4, 4], [7, 1]], "int32")


def _rows(values, positions=QUERY_POSITIONS):
    return np.take_along_axis(np.asarray(values), positions[:, :, None], axis=1)


@pytest.mark.parametrize("kind", MASK_KINDS)
@pytest.mark.parametrize("training", [False, True], ids=["inference", "training_path"])
def test_attention_query_positions_match_numpy_rows(kind, training, x, rng):
    layer = _attention(num_heads=4, num_key_value_heads=2, rope_max_wavelength=100.0)
    call_kwargs, mask = _masks(kind, rng)
    want = _rows(helpers.attention(layer, x, mask))
    got = layer(x, query_positions=QUERY_POSITIONS, training=training, **call_kwargs)
    np.testing.assert_allclose(got, want, **TOL)


def test_encoder_block_query_positions_match_numpy_rows(x, rng):
    block = TransformerEncoderBlock(2, 24, layer_norm_epsilon=1e-6)
    block.build(x.shape)
    helpers.randomize_weights(block)
    call_kwargs, mask = _masks("attention_mask_padding", rng)
    want = _rows(_encoder_reference(block, x, mask))
    got = block(x, query_positions=QUERY_POSITIONS, **call_kwargs)
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-4)
    symbolic = block(keras.Input((T, D)), query_positions=keras.Input((2,), dtype="int32"))
    assert tuple(symbolic.shape) == (None, 2, D)


def _decoder_reference(block, x, mask, positions=None):
    """Pre-norm decoder block in numpy: `h = x + MHA(norm(x)); h + FFN(norm(h))`."""
    norm = block.normalization
    attention_in = helpers.normalize(norm, block.attention_norm, x)
    h = x + helpers.attention(block.attention, attention_in, mask, positions)
    return h + helpers.feedforward(
        block.feedforward, helpers.normalize(norm, block.feedforward_norm, h)
    )


@pytest.mark.parametrize(
    "kwargs",
    [
        pytest.param(dict(normalization="layer_norm", activation="gelu"), id="ln_gelu"),
        pytest.param(dict(normalization="layer_norm", activation="swiglu"), id="ln_swiglu"),
        pytest.param(dict(normalization="rms_norm", activation="gelu"), id="rms_gelu"),
        pytest.param(
            dict(
                normalization="rms_norm",
                activation="swiglu",
                num_heads=4,
                num_key_value_heads=2,
                use_bias=False,
                rope_max_wavelength=10000.0,
            ),
            id="rms_swiglu_gqa_rope",
        ),
    ],
)
@pytest.mark.parametrize("kind", ["padding_causal", "segments_causal"])
def test_decoder_block_matches_numpy_pre_norm(kwargs, kind, x, rng):
    block = TransformerDecoderBlock(**{"num_heads": 2, "intermediate_dim": 24, **kwargs})
    block.build(x.shape)
    helpers.randomize_weights(block)
    call_kwargs, mask = _masks(kind, rng)
    call_kwargs.pop("use_causal_mask")  # the decoder is always causal
    want = _decoder_reference(block, x, mask)
    np.testing.assert_allclose(block(x, **call_kwargs), want, atol=1e-4, rtol=1e-4)


def test_decoder_block_position_ids_match_numpy(x, rng):
    block = TransformerDecoderBlock(4, 24, num_key_value_heads=2, rope_max_wavelength=100.0)
    block.build(x.shape)
    helpers.randomize_weights(block)
    position_ids = np.sort(rng.integers(0, 20, size=(B, T)), axis=1)  # arbitrary, per row
    call_kwargs, mask = _masks("padding_causal", rng)
    want = _decoder_reference(block, x, mask, position_ids)
    got = block(x, padding_mask=call_kwargs["padding_mask"], position_ids=position_ids)
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-4)


def test_masked_lm_head_matches_numpy(x):
    embedding = TokenEmbedding(input_dim=20, output_dim=D)
    head = MaskedLMHead(embedding, layer_norm_epsilon=1e-6)
    positions = np.array([[0, 7], [3, 3], [5, 1]])
    head(x, mask_positions=positions)
    helpers.randomize_weights(head)
    gathered = np.take_along_axis(x.astype(np.float64), positions[:, :, None], axis=1)
    kernel, bias = helpers.weights_of(head.transform)
    h = helpers.normalize("layer_norm", head.layer_norm, helpers.gelu(gathered @ kernel + bias))
    table = helpers.numpy(embedding.embeddings)
    want = h @ table.T + helpers.numpy(head.output_bias)
    got = head(x, mask_positions=positions)
    assert tuple(got.shape) == (B, 2, 20)
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-4)


# --- contracts for every layer class -------------------------------------------------------


def _floats(rng, batch, length, *rest):
    return rng.normal(size=(batch, length, *(rest or (D,)))).astype("float32")


def _padding(rng, batch, length):
    lengths = np.concatenate([[length], rng.integers(1, length + 1, size=batch - 1)])
    return helpers.padding_mask(lengths, length).astype("int32")


def _segments(rng, batch, length):
    return np.cumsum(rng.random((batch, length)) < 0.3, axis=1).astype("int32")


@dataclasses.dataclass
class Case:
    """One layer configuration: how to make it and how to make inputs for it."""

    id: str
    make: Callable[[], keras.layers.Layer]
    # (rng, batch, length) -> arrays; the first is passed positionally, the rest by name.
    inputs: Callable[[np.random.Generator, int, int], dict]
    kwargs: dict = dataclasses.field(default_factory=dict)  # static call arguments
    batched: bool = True  # False: output has batch 1 (position tables)
    mixed_dtype: str = "bfloat16"  # output dtype under mixed_bfloat16


CASES = [
    Case(
        "attention",
        lambda: MultiHeadAttention(2, bias_initializer="random_normal"),
        lambda r, b, t: {"inputs": _floats(r, b, t), "padding_mask": _padding(r, b, t)},
    ),
    Case(
        "attention_gqa_rope_segments",
        lambda: MultiHeadAttention(
            4, num_key_value_heads=2, rope_max_wavelength=100.0, use_bias=False, dropout=0.1
        ),
        lambda r, b, t: {"inputs": _floats(r, b, t), "segment_ids": _segments(r, b, t)},
        kwargs={"use_causal_mask": True},
    ),
    Case(
        "token_embedding",
        lambda: TokenEmbedding(input_dim=20, output_dim=D),
        lambda r, b, t: {"inputs": r.integers(0, 20, size=(b, t)).astype("int32")},
    ),
    Case(
        "token_embedding_reverse",
        lambda: TokenEmbedding(input_dim=20, output_dim=D),
        lambda r, b, t: {"inputs": _floats(r, b, t)},
        kwargs={"reverse": True},
        mixed_dtype="float32",  # logits: the float32 table is not downcast (Keras behaviour)
    ),
    Case(
        "position_embedding",
        lambda: PositionEmbedding(sequence_length=12),
        lambda r, b, t: {"inputs": _floats(r, b, t)},
        batched=False,
    ),
    Case(
        "sinusoidal",
        lambda: SinusoidalPositionEncoding(max_wavelength=100.0),
        lambda r, b, t: {"inputs": _floats(r, b, t)},
        batched=False,
    ),
    Case(
        "rotary",
        lambda: RotaryEmbedding(max_wavelength=100.0, scaling_factor=2.0),
        lambda r, b, t: {"inputs": _floats(r, b, t, 2, 8)},
    ),
    Case(
        "feedforward_swiglu",
        lambda: FeedForward(24, "swiglu", use_bias=False),
        lambda r, b, t: {"inputs": _floats(r, b, t)},
    ),
    Case(
        "encoder",
        lambda: TransformerEncoderBlock(2, 24, dropout=0.1),
        lambda r, b, t: {"inputs": _floats(r, b, t), "padding_mask": _padding(r, b, t)},
    ),
    Case(
        "decoder",
        lambda: TransformerDecoderBlock(2, 24),
        lambda r, b, t: {"inputs": _floats(r, b, t), "padding_mask": _padding(r, b, t)},
    ),
    Case(
        "decoder_llama",
        lambda: TransformerDecoderBlock(
            4,
            24,
            num_key_value_heads=2,
            normalization="rms_norm",
            activation="swiglu",
            use_bias=False,
            rope_max_wavelength=10000.0,
        ),
        lambda r, b, t: {"inputs": _floats(r, b, t), "segment_ids": _segments(r, b, t)},
    ),
    Case(
        "masked_lm_head",
        lambda: MaskedLMHead(TokenEmbedding(input_dim=20, output_dim=D), activation="relu"),
        lambda r, b, t: {
            "inputs": _floats(r, b, t),
            "mask_positions": r.integers(0, t, size=(b, 3)).astype("int32"),
        },
        mixed_dtype="float32",
    ),
    Case(
        "dropout",
        lambda: Dropout(0.3, seed=1),
        lambda r, b, t: {"inputs": _floats(r, b, t)},
    ),
    Case(
        "layer_norm",
        lambda: LayerNormalization(epsilon=1e-6),
        lambda r, b, t: {"inputs": _floats(r, b, t)},
        mixed_dtype="bfloat16",
    ),
]
# Every layer class defined in tfllm.layers, found by inspection so new ones need a case.
LAYER_MODULES = [
    attention_module,
    dropout_module,
    embedding_module,
    heads_module,
    normalization_module,
    transformer_module,
]
LAYER_CLASSES = {
    cls
    for module in LAYER_MODULES
    for _, cls in inspect.getmembers(module, inspect.isclass)
    if issubclass(cls, keras.layers.Layer) and cls.__module__ == module.__name__
}
BASE_CONFIG_KEYS = {"name", "trainable", "dtype"}
case_params = pytest.mark.parametrize("case", [pytest.param(c, id=c.id) for c in CASES])


def test_cases_cover_every_layer_class():
    assert len(LAYER_CLASSES) >= 9
    assert {type(case.make()) for case in CASES} == LAYER_CLASSES


def _as_json(config):
    """Config as it reads back from a JSON file (tuples become lists)."""
    return json.loads(json.dumps(config))


def _call(layer, arrays, case, **extra):
    first, *rest = arrays
    return layer(arrays[first], **{k: arrays[k] for k in rest}, **case.kwargs, **extra)


def _built(case, arrays):
    layer = case.make()
    _call(layer, arrays, case)
    return layer


@case_params
def test_config_round_trip(case, rng):
    arrays = case.inputs(rng, B, T)
    layer = _built(case, arrays)
    config = layer.get_config()
    cls = type(layer)
    if "__init__" in vars(cls):  # tfllm's own constructors: config = exactly their arguments
        params = set(inspect.signature(cls.__init__).parameters) - {"self", "kwargs"}
        assert set(config) - BASE_CONFIG_KEYS == params
    clone = cls.from_config(config)
    assert clone.get_config() == config
    _call(clone, arrays, case)
    clone.set_weights(layer.get_weights())
    np.testing.assert_allclose(_call(clone, arrays, case), _call(layer, arrays, case), **TOL)


@case_params
def test_serialize_deserialize(case, rng):
    arrays = case.inputs(rng, B, T)
    layer = _built(case, arrays)
    serialized = json.loads(json.dumps(keras.saving.serialize_keras_object(layer)))
    assert serialized["registered_name"] == f"tfllm>{type(layer).__name__}"
    restored = keras.saving.deserialize_keras_object(serialized)
    assert type(restored) is type(layer)
    assert _as_json(restored.get_config()) == _as_json(layer.get_config())
    _call(restored, arrays, case)
    restored.set_weights(layer.get_weights())
    np.testing.assert_allclose(_call(restored, arrays, case), _call(layer, arrays, case), **TOL)


@case_params
def test_keras_file_round_trip(case, rng, tmp_path):
    arrays = case.inputs(rng, B, T)
    symbolic = {k: keras.Input(v.shape[1:], dtype=v.dtype, name=k) for k, v in arrays.items()}
    layer = case.make()
    model = keras.Model(symbolic, _call(layer, symbolic, case))
    want = model(arrays)
    model.save(tmp_path / "model.keras")
    loaded = keras.saving.load_model(tmp_path / "model.keras")
    np.testing.assert_allclose(loaded(arrays), want, **TOL)


@case_params
def test_tf_function_with_unknown_batch_and_length(case, rng):
    arrays = case.inputs(rng, B, T)
    layer = _built(case, arrays)
    signature = {
        k: tf.TensorSpec((None, None, *v.shape[2:]), v.dtype.name) for k, v in arrays.items()
    }
    traced = tf.function(
        lambda a: _call(layer, a, case), input_signature=[signature], jit_compile=False
    )
    for batch, length in [(B, T), (1, 5)]:
        smaller = case.inputs(np.random.default_rng(batch), batch, length)
        got = traced(smaller)
        assert got.shape[1] == (3 if case.id == "masked_lm_head" else length)
        np.testing.assert_allclose(got, _call(layer, smaller, case), **TOL)
    assert traced.experimental_get_tracing_count() == 1


@case_params
def test_mirrored_strategy(case, rng, mirrored_strategy):
    arrays = case.inputs(rng, 4, T)
    with mirrored_strategy.scope():
        layer = _built(case, arrays)
    if layer.weights:
        assert isinstance(layer.weights[0].value, tf.distribute.DistributedValues)
    want = np.asarray(_call(layer, arrays, case))

    def replica_slice(context):
        i = context.replica_id_in_sync_group
        return {k: v[2 * i : 2 * i + 2] for k, v in arrays.items()}

    per_replica = mirrored_strategy.experimental_distribute_values_from_function(replica_slice)
    replica_fn = tf.function(lambda a: _call(layer, a, case), jit_compile=False)
    outputs = mirrored_strategy.run(replica_fn, (per_replica,))
    results = [np.asarray(r) for r in mirrored_strategy.experimental_local_results(outputs)]
    assert len(results) == 2
    if case.batched:
        np.testing.assert_allclose(np.concatenate(results), want, **TOL)
    else:
        for result in results:
            np.testing.assert_allclose(result, want, **TOL)


@case_params
def test_mixed_bfloat16(case, rng):
    arrays = case.inputs(rng, B, T)
    reference = _built(case, arrays)
    want = np.asarray(_call(reference, arrays, case))
    keras.config.set_dtype_policy("mixed_bfloat16")
    layer = _built(case, arrays)
    layer.set_weights(reference.get_weights())
    assert all(w.dtype == "float32" for w in layer.weights)  # variables stay float32
    got = _call(layer, arrays, case)
    assert got.dtype == case.mixed_dtype
    got = np.asarray(tf.cast(got, "float32"))
    assert np.isfinite(got).all()
    assert np.abs(got - want).max() <= 5e-2 * np.abs(want).max()


# --- errors --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: MultiHeadAttention(0), "`num_heads`.*0"),
        (lambda: MultiHeadAttention(4, num_key_value_heads=3), "`num_key_value_heads`.*4.*3"),
        (lambda: MultiHeadAttention(2, dropout=1.0), "`dropout`"),
        (lambda: FeedForward(8, activation="tanh"), "`activation`.*'tanh'"),
        (lambda: TransformerEncoderBlock(2, 8, activation="tanh"), "`activation`.*'tanh'"),
        (lambda: TransformerDecoderBlock(2, 8, activation="tanh"), "`activation`.*'tanh'"),
        (
            lambda: TransformerDecoderBlock(2, 8, normalization="batch_norm"),
            "`normalization`.*'batch_norm'",
        ),
        (lambda: MaskedLMHead(TokenEmbedding(5, 4), activation="swiglu"), "`activation`"),
        (lambda: PositionEmbedding(0), "`sequence_length`.*0"),
    ],
)
def test_constructor_errors(make, match):
    with pytest.raises(ValueError, match=match):
        make()


@pytest.mark.parametrize(
    "make",
    [
        lambda: MultiHeadAttention(3),
        lambda: TransformerEncoderBlock(3, 8),
        lambda: TransformerDecoderBlock(3, 8),
    ],
    ids=["attention", "encoder", "decoder"],
)
def test_hidden_dim_not_divisible_by_num_heads(make, x):
    with pytest.raises(ValueError, match="`hidden_dim`.*`num_heads`.*hidden_dim=16.*num_heads=3"):
        make()(x)


@pytest.mark.parametrize("shape", [(B, D), (B, T, 2, D)], ids=["rank2", "rank4"])
@pytest.mark.parametrize("built", [False, True])
def test_attention_rejects_wrong_input_rank(shape, built, x):
    layer = MultiHeadAttention(2)
    if built:
        layer(x)
    with pytest.raises(ValueError, match="ndim=3|batch, length, hidden_dim"):
        layer(np.zeros(shape, "float32"))


def test_attention_query_positions_reject_cache(x):
    layer = _attention()
    cache = (np.zeros((B, 2, T, D // 2), "float32"),) * 2
    with pytest.raises(ValueError, match="`query_positions`"):
        layer(x, cache=cache, cache_update_index=0, query_positions=QUERY_POSITIONS)


def test_attention_cache_needs_update_index(x):
    with pytest.raises(ValueError, match="`cache_update_index`"):
        MultiHeadAttention(2)(x, cache=_zero_cache(2, T, 8))


@pytest.mark.parametrize(
    "cache",
    [
        (np.zeros((B, 1, T, 8)),) * 2,
        (np.zeros((B, 2, T, 4)),) * 2,
        (np.zeros((B, 2, T, 2, 8)),) * 2,
        (np.zeros((B, 2, T, 8)),) * 3,
        np.zeros((B, 2, T, 2, 8)),
    ],
    ids=["kv_heads", "head_dim", "rank5", "three", "one_array"],
)
def test_attention_rejects_bad_cache(cache, x):
    layer = MultiHeadAttention(2)
    match = r"a pair \(key_cache, value_cache\), each of shape \(batch, 2, max_length, 8\)"
    with pytest.raises(ValueError, match=match):
        layer(x, cache=cache, cache_update_index=0)


@pytest.mark.parametrize("bad_id", [-1, 20, 1000])
def test_token_embedding_rejects_out_of_range_ids(bad_id):
    layer = TokenEmbedding(input_dim=20, output_dim=4)
    with pytest.raises(ValueError, match=rf"\[0, 20\).*token id {bad_id}\b"):
        layer(np.array([[1, 2], [bad_id, 3]]))


def test_position_embedding_rejects_too_long_sequence():
    with pytest.raises(ValueError, match="at most 4.*length 5"):
        PositionEmbedding(sequence_length=4)(np.zeros((1, 5, 8), "float32"))


def test_rotary_rejects_odd_head_dim():
    with pytest.raises(ValueError, match="even head dimension.*5"):
        RotaryEmbedding()(np.zeros((1, 3, 2, 5), "float32"))
