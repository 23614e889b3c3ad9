"""Shared test helpers: float64 numpy references for the layers and weight utilities.

The references are written from the papers' formulas, not from tfllm code, so the layer
tests compare tfllm against an independent implementation.
"""

import math

import numpy as np

# --- elementwise functions ---------------------------------------------------------------

_erf = np.vectorize(math.erf)


def softmax(x, axis=-1):
    x = x - x.max(axis=axis, keepdims=True)
    e = np.exp(x)
    return e / e.sum(axis=axis, keepdims=True)


def gelu(x):
    """Exact GELU, `x * Phi(x)`."""
    return 0.5 * x * (1.0 + _erf(x / math.sqrt(2.0)))


def gelu_tanh(x):
    """The tanh approximation of GELU used by GPT-2."""
    return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))


def silu(x):
    return x / (1.0 + np.exp(-x))


ACTIVATIONS = {
    "gelu": gelu,
    "gelu_approximate": gelu_tanh,
    "relu": lambda x: np.maximum(x, 0.0),
    "silu": silu,
}


def layer_norm(x, gamma, beta, epsilon):
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + epsilon) * gamma + beta


def rms_norm(x, scale, epsilon):
    return x / np.sqrt((x**2).mean(-1, keepdims=True) + epsilon) * scale


# --- position information ----------------------------------------------------------------


def rope(x, positions, max_wavelength=10000.0, scaling_factor=1.0):
    """Rotate-half RoPE on `(B, T, N, h)`: pair `(x[i], x[i + h/2])` turns by `p * theta_i`.

    `positions`: `(T,)` shared by all rows, or `(B, T)`.
    """
    half = x.shape[-1] // 2
    out = np.empty_like(x, dtype=np.float64)
    positions = np.broadcast_to(np.asarray(positions, np.float64), x.shape[:2])
    for i in range(half):
        theta = max_wavelength ** (-2.0 * i / x.shape[-1])
        angle = (positions / scaling_factor * theta)[:, :, None]  # (B, T, 1)
        a, b = x[..., i], x[..., i + half]
        out[..., i] = a * np.cos(angle) - b * np.sin(angle)
        out[..., i + half] = b * np.cos(angle) + a * np.sin(angle)
    return out


def sinusoidal(length, dim, max_wavelength=10000.0, start=0):
    """`PE[p, 2i] = sin(p / w^(2i/d))`, `PE[p, 2i+1] = cos(p / w^(2i/d))` (Vaswani et al.)."""
    pe = np.zeros((length, dim))
    for p in range(length):
        pos = p + start
        for j in range(dim):
            two_i = j - j % 2
            angle = pos / max_wavelength ** (two_i / dim)
            pe[p, j] = math.sin(angle) if j % 2 == 0 else math.cos(angle)
    return pe


# --- masks -------------------------------------------------------------------------------


def causal_mask(length):
    return np.tril(np.ones((length, length), bool))[None]


def padding_mask(lengths, length):
    """`(B, T)` mask, True for the first `lengths[b]` tokens of row `b`."""
    return np.arange(length)[None, :] < np.asarray(lengths)[:, None]


# --- layers ------------------------------------------------------------------------------


def numpy(variable):
    """A Keras variable (or tensor) as a float64 numpy array."""
    return np.asarray(variable.numpy(), np.float64)


def weights_of(dense):
    """`(kernel, bias)` of a Keras `Dense` as float64 numpy (bias zeros if it has none)."""
    kernel = numpy(dense.kernel)
    bias = numpy(dense.bias) if dense.bias is not None else 0.0
    return kernel, bias


def attention(layer, x, mask=None, positions=None):
    """Multi-head attention from a `MultiHeadAttention` layer's weights, in float64.

    `mask`: boolean, broadcastable to `(B, T, T)`; True where attention is allowed.
    `positions`: `(T,)` or `(B, T)` positions used for RoPE (default `0..T-1`).
    """
    x = np.asarray(x, np.float64)
    b, t, _ = x.shape
    n = layer.num_heads
    k = layer.num_key_value_heads or n
    qkv_kernel, qkv_bias = weights_of(layer.qkv_dense)
    out_kernel, out_bias = weights_of(layer.output_dense)
    h = qkv_kernel.shape[1] // (n + 2 * k)
    qkv = x @ qkv_kernel + qkv_bias
    q = qkv[..., : n * h].reshape(b, t, n, h)
    kk = qkv[..., n * h : (n + k) * h].reshape(b, t, k, h)
    v = qkv[..., (n + k) * h :].reshape(b, t, k, h)
    if layer.rope_max_wavelength is not None:
        positions = np.arange(t) if positions is None else positions
        q = rope(q, positions, layer.rope_max_wavelength, layer.rope_scaling_factor)
        kk = rope(kk, positions, layer.rope_max_wavelength, layer.rope_scaling_factor)
    heads = []
    for i in range(n):
        j = i // (n // k)  # key/value head shared by query heads j*(n//k) ... (j+1)*(n//k)-1
        scores = np.einsum("bth,bsh->bts", q[:, :, i], kk[:, :, j]) / math.sqrt(h)
        if mask is not None:
            scores = np.where(np.broadcast_to(mask, scores.shape), scores, -np.inf)
        heads.append(np.einsum("bts,bsh->bth", softmax(scores), v[:, :, j]))
    return np.concatenate(heads, axis=-1) @ out_kernel + out_bias


def feedforward(layer, x):
    """`FeedForward` from its weights (swiglu: fused kernel, gate half first)."""
    w1, b1 = weights_of(layer.intermediate_dense)
    w2, b2 = weights_of(layer.output_dense)
    hidden = np.asarray(x, np.float64) @ w1 + b1
    if layer.activation == "swiglu":
        gate, up = np.split(hidden, 2, axis=-1)
        hidden = silu(gate) * up
    else:
        hidden = ACTIVATIONS[layer.activation](hidden)
    return hidden @ w2 + b2


def normalize(kind, norm_layer, x):
    """Normalization `kind` ("layer_norm" or "rms_norm") with a Keras norm layer's weights."""
    if kind == "layer_norm":
        gamma, beta = (numpy(w) for w in norm_layer.weights)
        return layer_norm(x, gamma, beta, norm_layer.epsilon)
    (scale,) = (numpy(w) for w in norm_layer.weights)
    return rms_norm(x, scale, norm_layer.epsilon)


# --- weights -----------------------------------------------------------------------------


def randomize_weights(layer, seed=0, scale=0.3):
    """Give every weight random values (biases and norm scales too, so none is trivial)."""
    rng = np.random.default_rng(seed)
    for variable in layer.weights:
        values = rng.normal(0.0, scale, variable.shape)
        if variable.name in ("gamma", "scale"):
            values += 1.0
        variable.assign(values.astype(variable.dtype))
