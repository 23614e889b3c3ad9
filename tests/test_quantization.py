"""Int8 and bfloat16 inference: numpy's int8 scheme, real text near float32, save, export.

References: the per-channel absmax scheme written out in numpy; float32 outputs of the
same weights (all-MiniLM-L6-v2's real checkpoint, and a GPT on real English lines);
greedy decoding by full forward passes without a cache; the float32 export's signatures.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

from export.saved_model import export_saved_model
from tfllm import assets
from tfllm.generation import generate
from tfllm.layers.dense import Dense
from tfllm.layers.embedding import TokenEmbedding
from tfllm.models import CausalLM, GPTBackbone, TextClassifier
from tfllm.models.preset_io import read_preset, with_overrides
from tfllm.preprocessing import CausalLMPreprocessor
from tfllm.tokenizers import WordPieceTokenizer

WEIGHT_ONLY = keras.quantizers.Int8QuantizationConfig(activation_quantizer=None)
LINES = [
    "To be, or not to be, that is the question:",
    "Whether 'tis nobler in the mind to suffer the slings and arrows of outrageous fortune,",
    "Now is the winter of our discontent made glorious summer by this sun of York;",
    "The quality of mercy is not strained; it droppeth as the gentle rain from heaven",
]


def absmax_int8(x, axis):
    """`(int8 values as float, scale)`: `x ≈ values / scale`, one scale per slice."""
    scale = 127.0 / np.abs(x).max(axis=axis, keepdims=True)
    return np.clip(np.round(x * scale), -127, 127), scale


@pytest.mark.parametrize("config", [None, WEIGHT_ONLY], ids=["int8", "int8_weight_only"])
def test_int8_token_embedding_matches_numpy(config):
    rng = np.random.default_rng(0)
    layer = TokenEmbedding(11, 6)
    layer.build((None, None))
    table = rng.normal(size=(11, 6)).astype("float32")
    layer.embeddings.assign(table)
    layer.quantize("int8", config=config)
    assert layer.embeddings.dtype == "int8"
    values, scale = absmax_int8(table, axis=1)  # one scale per vocabulary row
    ids = np.array([[1, 5, 10]])
    np.testing.assert_allclose(layer(ids)[0], values[ids[0]] / scale[ids[0]], rtol=1e-6)
    x = rng.normal(size=(3, 6)).astype("float32")
    if config is None:  # activations quantized per row, too
        x_values, x_scale = absmax_int8(x, axis=1)
        expected = (x_values @ values.T) / x_scale / scale.T
    else:
        expected = x @ (values / scale).T
    np.testing.assert_allclose(layer(x, reverse=True), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("jit_compile", [False, True], ids=["graph", "xla"])
@pytest.mark.parametrize("config", [None, WEIGHT_ONLY], ids=["int8", "int8_weight_only"])
def test_int8_dense_stores_its_kernel_transposed_and_matches_keras(config, jit_compile):
    rng = np.random.default_rng(1)
    kernel = rng.normal(size=(6, 5)).astype("float32")
    bias = rng.normal(size=5).astype("float32")
    x = rng.normal(size=(2, 3, 6)).astype("float32")
    ours, theirs = Dense(5), keras.layers.Dense(5)
    for layer in (ours, theirs):
        layer.build((None, None, 6))
        layer.kernel.assign(kernel)
        layer.bias.assign(bias)
        layer.quantize("int8", config=config)
    assert tuple(ours._kernel.shape) == (5, 6) and ours._kernel.dtype == "int8"
    values, scale = absmax_int8(kernel.astype("float64"), axis=0)  # one scale per unit
    np.testing.assert_array_equal(ours._kernel.numpy().T, values)
    if config is None:  # activations quantized per token, too
        x_values, x_scale = absmax_int8(x.astype("float64"), axis=-1)
        expected = (x_values @ values) / x_scale / scale + bias
    else:
        expected = x @ (values / scale) + bias
    got = tf.function(ours, jit_compile=jit_compile)(x)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got, theirs(x), rtol=1e-6, atol=1e-6)


def test_qlora_on_a_transposed_int8_dense_and_its_keras_file(tmp_path):
    """LoRA over int8 weights: numpy's dequantized product plus the adapters; the
    `.keras` file holds the merged kernel requantized per unit, as Keras's `Dense`."""
    rng = np.random.default_rng(2)
    kernel = rng.normal(size=(6, 4)).astype("float32")
    x = rng.normal(size=(3, 6)).astype("float32")
    model = keras.Sequential([keras.Input((6,)), Dense(4, use_bias=False)])
    model.layers[0].kernel.assign(kernel)
    model.layers[0].quantize("int8", config=WEIGHT_ONLY)
    model.layers[0].enable_lora(2)
    a, b = rng.normal(size=(6, 2)), rng.normal(size=(2, 4))
    model.layers[0].lora_kernel_a.assign(a)
    model.layers[0].lora_kernel_b.assign(b)
    values, scale = absmax_int8(kernel.astype("float64"), axis=0)
    merged = values / scale + a @ b
    np.testing.assert_allclose(model(x), x @ merged, rtol=1e-5, atol=1e-5)
    assert [w.name for w in model.trainable_weights] == ["lora_kernel_a", "lora_kernel_b"]

    model.save(tmp_path / "qlora.keras")
    loaded = keras.saving.load_model(tmp_path / "qlora.keras")
    merged_values, merged_scale = absmax_int8(merged, axis=0)
    np.testing.assert_array_equal(loaded.layers[0]._kernel.numpy().T, merged_values)
    np.testing.assert_allclose(loaded(x), x @ (merged_values / merged_scale), rtol=1e-5, atol=1e-5)


@pytest.fixture(scope="module")
def minilm_dir():
    return assets.minilm_path()


@pytest.fixture(scope="module")
def minilm_inputs(minilm_dir):
    tokenizer = WordPieceTokenizer(minilm_dir / "vocab.txt", lowercase=True)
    ids = tokenizer.tokenize(tf.constant(LINES)).to_tensor(0)
    return {
        "token_ids": ids,
        "segment_ids": tf.zeros_like(ids),
        "padding_mask": tf.cast(ids != 0, "int32"),
    }


def relative_error(got, expected, mask):
    """Largest error over the unpadded positions, relative to the outputs' largest value."""
    keep = np.asarray(mask, bool)
    got, expected = np.asarray(got, "float32")[keep], np.asarray(expected, "float32")[keep]
    return np.abs(got - expected).max() / np.abs(expected).max()


# Stated tolerances: error of the real checkpoint's sequence output relative to its
# largest float32 value, and the cosine of mean-pooled sentence embeddings.
MINILM_TOLERANCES = {
    "int8": (0.05, 0.99),
    "int8_weight_only": (0.03, 0.998),
    "bf16": (0.02, 0.9995),
}


@pytest.mark.slow
@pytest.mark.assets
@pytest.mark.parametrize("precision", list(MINILM_TOLERANCES))
def test_minilm_stays_near_float32_on_real_text(minilm_dir, minilm_inputs, precision):
    """The real all-MiniLM-L6-v2 weights, quantized, on real English lines."""
    reference = read_preset(minilm_dir).backbone
    expected = reference(minilm_inputs)["sequence_output"].numpy()
    task = TextClassifier(read_preset(minilm_dir).backbone, num_classes=2, pooling="mean")
    if precision == "bf16":
        task = with_overrides(task, dtype="bfloat16")
    else:
        task.quantize("int8", config=WEIGHT_ONLY if precision == "int8_weight_only" else None)
        assert task.backbone.get_layer("transformer_layer_0").weights  # still built
        assert {w.dtype for w in task.backbone.weights if w.path.endswith("/kernel")} == {"int8"}
    got = task.backbone(minilm_inputs)["sequence_output"].numpy()
    mask = minilm_inputs["padding_mask"].numpy()
    error_bound, cosine_bound = MINILM_TOLERANCES[precision]
    assert relative_error(got, expected, mask) < error_bound

    def pooled(x):
        return (x * mask[..., None]).sum(1) / mask.sum(1, keepdims=True)

    a, b = pooled(got.astype("float32")), pooled(expected)
    cosine = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert cosine.min() > cosine_bound


@pytest.fixture(scope="module")
def english():
    """A GPT (random weights) and all-MiniLM-L6-v2's WordPiece ids of `LINES`."""
    tokenizer = WordPieceTokenizer(assets.minilm_path() / "vocab.txt", lowercase=True)
    keras.utils.set_random_seed(3)
    backbone = GPTBackbone.from_preset("gpt_tiny", vocabulary_size=tokenizer.vocabulary_size())
    ids = tokenizer.tokenize(tf.constant(LINES)).to_tensor(0)
    return backbone, {"token_ids": ids, "padding_mask": tf.cast(ids != 0, "int32")}


def greedy_without_cache(model, prompt, steps):
    """Greedy tokens by a full forward pass over the whole sequence per new token."""
    ids = list(prompt)
    for _ in range(steps):
        x = {"token_ids": np.array([ids], "int32"), "padding_mask": np.ones((1, len(ids)))}
        ids.append(int(np.argmax(model(x)[0, -1])))
    return ids[len(prompt) :]


@pytest.mark.assets
@pytest.mark.parametrize("precision", ["int8", "int8_weight_only", "bf16"])
def test_causal_lm_stays_near_float32_and_decodes_with_its_cache(tmp_path, english, precision):
    backbone, inputs = english
    lm = CausalLM(with_overrides(backbone, dropout=0.0))
    expected = lm(inputs).numpy()
    if precision == "bf16":
        lm = with_overrides(lm, dtype="bfloat16")
    else:
        lm.quantize("int8", config=WEIGHT_ONLY if precision == "int8_weight_only" else None)
    got = lm(inputs)
    mask = inputs["padding_mask"].numpy()
    assert relative_error(got, expected, mask) < 0.03
    log_p = tf.nn.log_softmax(tf.cast(got, "float32")).numpy()
    log_q = tf.nn.log_softmax(expected).numpy()
    assert (np.exp(log_q) * (log_q - log_p)).sum(-1)[
        mask == 1
    ].max() < 5e-5  # KL(float32 || quantized)

    prompt = inputs["token_ids"][0, :5].numpy().tolist()
    new = generate(lm, [prompt], 6, stop_token_ids=())[0]
    assert new == greedy_without_cache(lm, prompt, 6)
    if precision == "int8_weight_only":  # the layers' XLA path (barrier, fused cast)
        assert generate(lm, [prompt], 6, stop_token_ids=(), jit_compile=True)[0] == new

    lm.save(tmp_path / "lm.keras")
    loaded = keras.saving.load_model(tmp_path / "lm.keras")
    dtypes = {w.path: w.dtype for w in loaded.weights}
    assert dtypes == {w.path: w.dtype for w in lm.weights}
    np.testing.assert_array_equal(loaded(inputs), got)


def test_quantize_leaves_the_preprocessor_and_generates_text():
    tokenizer = WordPieceTokenizer(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "to", "be", "or", "not"])
    keras.utils.set_random_seed(5)
    backbone = GPTBackbone.from_preset("gpt_tiny", vocabulary_size=8, dropout=0.0)
    lm = CausalLM(backbone, preprocessor=CausalLMPreprocessor(tokenizer, sequence_length=8))
    expected = lm.generate(["to be"], max_length=8)
    lm.quantize("int8")
    assert lm.preprocessor.tokenizer is tokenizer
    assert lm.backbone.token_embedding.embeddings.dtype == "int8"
    assert len(lm.generate(["to be"], max_length=8)) == len(expected) == 1


@pytest.mark.slow
def test_int8_export_keeps_int8_weights_and_the_float32_signatures(tmp_path):
    tokenizer = WordPieceTokenizer(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "to", "be", "or", "not"])
    keras.utils.set_random_seed(4)
    backbone = GPTBackbone.from_preset(
        "gpt_tiny", vocabulary_size=tokenizer.vocabulary_size(), max_sequence_length=32
    )
    lm = CausalLM(with_overrides(backbone, dropout=0.0))
    options = dict(tokenizer=tokenizer, max_new_tokens=5, validate=False)
    float_path = export_saved_model(lm, tmp_path / "float", "lm", **options)
    lm.quantize("int8")
    int8_path = export_saved_model(lm, tmp_path / "int8", "lm", **options)
    floats, int8s = tf.saved_model.load(str(float_path)), tf.saved_model.load(str(int8_path))
    int8_count = sum(w.dtype == "int8" for w in lm.weights)  # 8 kernels + the embedding
    assert int8_count == 9 and sum(v.dtype == tf.int8 for v in int8s.variables) == int8_count
    assert sorted(floats.signatures) == sorted(int8s.signatures)
    for name in floats.signatures:
        a, b = floats.signatures[name], int8s.signatures[name]
        assert a.structured_input_signature == b.structured_input_signature
        assert a.structured_outputs.keys() == b.structured_outputs.keys()
        for key, spec in a.structured_outputs.items():
            assert (spec.dtype, spec.shape.as_list()) == (
                b.structured_outputs[key].dtype,
                b.structured_outputs[key].shape.as_list(),
            )
    prompts = ["to be or not", "not to be"]
    out = int8s.signatures["generate"](text=tf.constant(prompts))
    assert [t.decode() for t in out["text"].numpy()] == generate(
        lm, prompts, 5, tokenizer=tokenizer
    )
