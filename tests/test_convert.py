"""Weight conversion: keras-hub models, Hugging Face folders (tiny fakes and real MiniLM)."""

import json
import math

import keras_hub
import numpy as np
import pytest
import tensorflow as tf
from safetensors.numpy import load_file, save_file

from tfllm import assets
from tfllm.models import BertBackbone, GPTBackbone

TINY = dict(vocabulary_size=50, num_layers=2, num_heads=2, hidden_dim=16, max_sequence_length=12)


def randomize(model, seed=0):
    """Random values for every weight (norm scales near 1), so no weight is trivially 0/1."""
    rng = np.random.default_rng(seed)
    for variable in model.weights:
        values = rng.normal(0.0, 0.2, tuple(variable.shape))
        if variable.path.endswith("gamma"):
            values = 1.0 + values / 2
        variable.assign(values.astype("float32"))
    return model


def right_padded(batch=3, length=10, vocab=50, seed=0):
    rng = np.random.default_rng(seed)
    mask = (np.arange(length)[None, :] < np.array([length, 7, 4])[:batch, None]).astype("int32")
    ids = rng.integers(1, vocab, (batch, length)).astype("int32") * mask
    return ids, mask


def max_diff(a, b, mask=None):
    diff = np.abs(np.asarray(a, "float64") - np.asarray(b, "float64"))
    return float(diff[mask.astype(bool)].max() if mask is not None else diff.max())


def keras_hub_bert():
    return randomize(keras_hub.models.BertBackbone(intermediate_dim=32, **TINY))


def keras_hub_gpt2():
    return randomize(keras_hub.models.GPT2Backbone(intermediate_dim=64, **TINY))  # 4 * hidden


def bert_inputs(ids, mask):
    return {
        "token_ids": ids,
        "segment_ids": (np.arange(ids.shape[1]) >= 5) * mask,
        "padding_mask": mask,
    }


# --- Hugging Face layout writers (torch `Linear` is (out, in); GPT-2 `Conv1D` is (in, out)) ---


def hf_bert_folder(folder, backbone, prefix=""):
    """Writes `backbone` (keras-hub BERT) as a Hugging Face BERT checkpoint folder."""
    w = {}

    def dense(name, layer, heads_in=False):  # keras-hub: q/k/v (d, N, hs), output (N, hs, d)
        kernel = layer.kernel.numpy()
        kernel = (
            kernel.reshape(-1, kernel.shape[-1]) if heads_in else kernel.reshape(len(kernel), -1)
        )
        w[f"{name}.weight"], w[f"{name}.bias"] = kernel.T, layer.bias.numpy().reshape(-1)

    def norm(name, layer):
        w[f"{name}.weight"], w[f"{name}.bias"] = layer.gamma.numpy(), layer.beta.numpy()

    w["embeddings.word_embeddings.weight"] = backbone.get_layer(
        "token_embedding"
    ).embeddings.numpy()
    w["embeddings.position_embeddings.weight"] = backbone.get_layer(
        "position_embedding"
    ).position_embeddings.numpy()
    w["embeddings.token_type_embeddings.weight"] = backbone.get_layer(
        "segment_embedding"
    ).embeddings.numpy()
    norm("embeddings.LayerNorm", backbone.get_layer("embeddings_layer_norm"))
    for i, block in enumerate(backbone.transformer_layers):
        p, attention = f"encoder.layer.{i}", block._self_attention_layer
        for part in ("query", "key", "value"):
            dense(f"{p}.attention.self.{part}", getattr(attention, f"{part}_dense"))
        dense(f"{p}.attention.output.dense", attention.output_dense, heads_in=True)
        norm(f"{p}.attention.output.LayerNorm", block._self_attention_layer_norm)
        dense(f"{p}.intermediate.dense", block._feedforward_intermediate_dense)
        dense(f"{p}.output.dense", block._feedforward_output_dense)
        norm(f"{p}.output.LayerNorm", block._feedforward_layer_norm)
    dense("pooler.dense", backbone.get_layer("pooled_dense"))
    config = dict(
        model_type="bert",
        architectures=["BertModel"],
        vocab_size=backbone.vocabulary_size,
        hidden_size=backbone.hidden_dim,
        num_hidden_layers=backbone.num_layers,
        num_attention_heads=backbone.num_heads,
        intermediate_size=backbone.intermediate_dim,
        max_position_embeddings=backbone.max_sequence_length,
        type_vocab_size=2,
        hidden_act="gelu",
        hidden_dropout_prob=0.1,
        layer_norm_eps=1e-12,
    )
    return write_folder(folder, config, w, prefix)


def hf_gpt2_folder(folder, backbone, prefix=""):
    """Writes `backbone` (keras-hub GPT-2) as a Hugging Face GPT-2 checkpoint folder."""
    d, n = backbone.hidden_dim, backbone.max_sequence_length
    w = {"wte.weight": backbone.token_embedding.embeddings.numpy()}
    w["wpe.weight"] = backbone.position_embedding.position_embeddings.numpy()

    def conv1d(name, kernel, bias):  # already (in, out)
        w[f"{name}.weight"], w[f"{name}.bias"] = kernel, bias

    def norm(name, layer):
        w[f"{name}.weight"], w[f"{name}.bias"] = layer.gamma.numpy(), layer.beta.numpy()

    for i, block in enumerate(backbone.transformer_layers):
        p, attention = f"h.{i}", block._self_attention_layer
        qkv = [getattr(attention, f"{part}_dense") for part in ("query", "key", "value")]
        conv1d(
            f"{p}.attn.c_attn",
            np.concatenate([x.kernel.numpy().reshape(d, d) for x in qkv], axis=1),
            np.concatenate([x.bias.numpy().reshape(d) for x in qkv]),
        )
        out = attention.output_dense
        conv1d(f"{p}.attn.c_proj", out.kernel.numpy().reshape(d, d), out.bias.numpy())
        norm(f"{p}.ln_1", block._self_attention_layer_norm)
        norm(f"{p}.ln_2", block._feedforward_layer_norm)
        for name, layer in (
            ("c_fc", block._feedforward_intermediate_dense),
            ("c_proj", block._feedforward_output_dense),
        ):
            conv1d(f"{p}.mlp.{name}", layer.kernel.numpy(), layer.bias.numpy())
        w[f"{p}.attn.bias"] = np.tril(np.ones((n, n), "float32"))[None, None]  # old causal buffer
    norm("ln_f", backbone.layer_norm)
    config = dict(
        model_type="gpt2",
        architectures=["GPT2LMHeadModel"],
        vocab_size=backbone.vocabulary_size,
        n_embd=d,
        n_layer=backbone.num_layers,
        n_head=backbone.num_heads,
        n_positions=n,
        n_inner=None,
        activation_function="gelu_new",
        layer_norm_epsilon=1e-5,
        resid_pdrop=0.1,
    )
    return write_folder(folder, config, w, prefix)


def write_folder(folder, config, weights, prefix=""):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config))
    weights = {prefix + k: np.ascontiguousarray(v, "float32") for k, v in weights.items()}
    save_file(weights, str(folder / "model.safetensors"))
    return folder


# --- keras-hub parity -------------------------------------------------------------------------


def test_bert_from_keras_hub():
    theirs = keras_hub_bert()
    ours = BertBackbone.from_keras_hub(theirs)
    inputs = bert_inputs(*right_padded())
    expected, got = theirs(inputs), ours(inputs)
    mask = inputs["padding_mask"]
    assert max_diff(got["sequence_output"], expected["sequence_output"], mask) <= 1e-5
    assert max_diff(got["pooled_output"], expected["pooled_output"]) <= 1e-5


def test_gpt_from_keras_hub():
    theirs = keras_hub_gpt2()
    ours = GPTBackbone.from_keras_hub(theirs)
    ids, mask = right_padded()
    inputs = {"token_ids": ids, "padding_mask": mask}
    assert max_diff(ours(inputs), theirs(inputs)) <= 1e-5


@pytest.mark.parametrize("prefix", ["", "bert."])
def test_bert_from_huggingface_folder_matches_keras_hub(tmp_path, prefix):
    source = keras_hub_bert()
    folder = hf_bert_folder(tmp_path / "bert", source, prefix)
    theirs = keras_hub.models.BertBackbone.from_preset(str(folder))
    # keras-hub's BERT runs the tanh GELU whatever config.json says.
    ours = BertBackbone.from_huggingface(folder, activation="gelu_approximate")
    inputs = bert_inputs(*right_padded())
    mask = inputs["padding_mask"]
    for reference in (theirs, source):
        expected, got = reference(inputs), ours(inputs)
        assert max_diff(got["sequence_output"], expected["sequence_output"], mask) <= 1e-5
        assert max_diff(got["pooled_output"], expected["pooled_output"]) <= 1e-5
    exact = BertBackbone.from_huggingface(folder)
    assert exact.activation == "gelu"  # hidden_act="gelu" is the erf form
    assert max_diff(exact(inputs)["sequence_output"], got["sequence_output"], mask) > 1e-6


@pytest.mark.parametrize("prefix", ["", "transformer."])
def test_gpt_from_huggingface_folder_matches_keras_hub(tmp_path, prefix):
    source = keras_hub_gpt2()
    folder = hf_gpt2_folder(tmp_path / "gpt2", source, prefix)
    theirs = keras_hub.models.GPT2Backbone.from_preset(str(folder))
    ours = GPTBackbone.from_huggingface(folder)
    assert (ours.intermediate_dim, ours.activation) == (64, "gelu_approximate")
    ids, mask = right_padded()
    inputs = {"token_ids": ids, "padding_mask": mask}
    assert max_diff(ours(inputs), theirs(inputs)) <= 1e-5
    assert max_diff(ours(inputs), source(inputs)) <= 1e-5


# --- Checkpoint errors ------------------------------------------------------------------------


@pytest.fixture
def tiny_bert_folder(tmp_path):
    return hf_bert_folder(tmp_path / "bert", keras_hub_bert())


@pytest.mark.parametrize("missing", ["config.json", "model.safetensors"])
def test_checkpoint_missing_file(tiny_bert_folder, missing):
    (tiny_bert_folder / missing).unlink()
    with pytest.raises(ValueError, match=missing):
        BertBackbone.from_huggingface(tiny_bert_folder)


def test_checkpoint_folder_does_not_exist(tmp_path):
    with pytest.raises(ValueError, match="nowhere"):
        GPTBackbone.from_huggingface(tmp_path / "nowhere")


@pytest.mark.parametrize(
    "key, value", [("hidden_size", 32), ("intermediate_size", 48), ("vocab_size", 60)]
)
def test_checkpoint_config_disagrees_with_tensors(tiny_bert_folder, key, value):
    config = json.loads((tiny_bert_folder / "config.json").read_text())
    (tiny_bert_folder / "config.json").write_text(json.dumps({**config, key: value}))
    with pytest.raises(ValueError, match="shape"):
        BertBackbone.from_huggingface(tiny_bert_folder)


def test_checkpoint_missing_tensor(tiny_bert_folder):
    weights = load_file(tiny_bert_folder / "model.safetensors")
    del weights["encoder.layer.1.output.dense.weight"]
    save_file(weights, str(tiny_bert_folder / "model.safetensors"))
    with pytest.raises(ValueError, match=r"encoder\.layer\.1\.output\.dense\.weight"):
        BertBackbone.from_huggingface(tiny_bert_folder)


def test_checkpoint_wrong_model_type(tiny_bert_folder, tmp_path):
    with pytest.raises(ValueError, match="gpt2.*bert"):
        GPTBackbone.from_huggingface(tiny_bert_folder)
    gpt_folder = hf_gpt2_folder(tmp_path / "gpt2", keras_hub_gpt2())
    with pytest.raises(ValueError, match="bert.*gpt2"):
        BertBackbone.from_huggingface(gpt_folder)


# --- Real checkpoint: all-MiniLM-L6-v2 --------------------------------------------------------

SENTENCES = [
    "A man is playing a guitar on stage.",
    "Someone performs a song on the guitar in front of an audience.",
    "The central bank raised interest rates for the third time this year, citing inflation.",
    "Café owners hate Mondays!",
]


@pytest.fixture(scope="session")
def minilm_dir():
    return assets.minilm_path()


@pytest.fixture(scope="session")
def minilm(minilm_dir):
    return BertBackbone.from_huggingface(minilm_dir)


@pytest.fixture(scope="session")
def minilm_inputs(minilm_dir):
    """The sentences as `[CLS] ... [SEP]` WordPiece ids, right padded with 0 ([PAD])."""
    import tensorflow_text as tf_text

    vocab = (minilm_dir / "vocab.txt").read_text(encoding="utf-8").splitlines()
    tokenizer = tf_text.FastBertTokenizer(
        vocab, lower_case_nfd_strip_accents=True, token_out_type=tf.int32
    )
    pieces = tokenizer.tokenize(tf.constant(SENTENCES)).to_list()
    cls, sep, unk = (vocab.index(t) for t in ("[CLS]", "[SEP]", "[UNK]"))
    rows = [[cls, *row, sep] for row in pieces]
    assert all(unk not in row for row in rows)
    length = max(map(len, rows))
    ids = np.array([row + [0] * (length - len(row)) for row in rows], "int32")
    mask = (np.arange(length)[None, :] < np.array([len(r) for r in rows])[:, None]).astype("int32")
    assert len(set(mask.sum(1))) == len(SENTENCES)  # different lengths, so padding is tested
    return {"token_ids": ids, "segment_ids": np.zeros_like(ids), "padding_mask": mask}


@pytest.mark.assets
def test_minilm_matches_keras_hub(minilm_dir, minilm, minilm_inputs):
    theirs = keras_hub.models.BertBackbone.from_preset(str(minilm_dir))
    ours = BertBackbone.from_huggingface(minilm_dir, activation="gelu_approximate")
    expected, got = theirs(minilm_inputs), ours(minilm_inputs)
    mask = minilm_inputs["padding_mask"]
    seq = max_diff(got["sequence_output"], expected["sequence_output"], mask)
    pooled = max_diff(got["pooled_output"], expected["pooled_output"])
    print(f"MiniLM vs keras-hub: sequence {seq:.2e}, pooled {pooled:.2e}")
    assert seq <= 1e-4 and pooled <= 1e-4
    exact = minilm(minilm_inputs)["sequence_output"]  # the activation override matters
    assert max_diff(exact, got["sequence_output"], mask) > 1e-5


def numpy_bert(weights, config, token_ids, segment_ids, padding_mask):
    """Independent float64 BERT forward pass (exact erf GELU) from raw Hugging Face tensors."""
    w = {k.removeprefix("bert."): v.astype("float64") for k, v in weights.items()}
    eps, heads = config["layer_norm_eps"], config["num_attention_heads"]
    erf = np.vectorize(math.erf, otypes=[np.float64])

    def norm(x, name):
        mean, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
        return (x - mean) / np.sqrt(var + eps) * w[f"{name}.weight"] + w[f"{name}.bias"]

    def linear(x, name):
        return x @ w[f"{name}.weight"].T + w[f"{name}.bias"]

    def split(x):  # (B, T, d) -> (B, N, T, hs)
        b, t, d = x.shape
        return x.reshape(b, t, heads, d // heads).transpose(0, 2, 1, 3)

    t = token_ids.shape[1]
    x = w["embeddings.word_embeddings.weight"][token_ids]
    x = (
        x
        + w["embeddings.position_embeddings.weight"][:t]
        + w["embeddings.token_type_embeddings.weight"][segment_ids]
    )
    x = norm(x, "embeddings.LayerNorm")
    visible = padding_mask.astype(bool)[:, None, None, :]  # (B, 1, 1, T) keys
    for i in range(config["num_hidden_layers"]):
        p = f"encoder.layer.{i}"
        q, k, v = (split(linear(x, f"{p}.attention.self.{n}")) for n in ("query", "key", "value"))
        scores = np.where(visible, q @ k.transpose(0, 1, 3, 2) / math.sqrt(q.shape[-1]), -np.inf)
        probs = np.exp(scores - scores.max(-1, keepdims=True))
        probs /= probs.sum(-1, keepdims=True)
        context = (probs @ v).transpose(0, 2, 1, 3).reshape(x.shape)
        x = norm(
            x + linear(context, f"{p}.attention.output.dense"), f"{p}.attention.output.LayerNorm"
        )
        h = linear(x, f"{p}.intermediate.dense")
        h = 0.5 * h * (1.0 + erf(h / math.sqrt(2.0)))
        x = norm(x + linear(h, f"{p}.output.dense"), f"{p}.output.LayerNorm")
    return x, np.tanh(linear(x[:, 0], "pooler.dense"))


@pytest.mark.assets
def test_minilm_matches_numpy_reference(minilm_dir, minilm, minilm_inputs):
    config = json.loads((minilm_dir / "config.json").read_text())
    weights = load_file(minilm_dir / "model.safetensors")
    sequence, pooled = numpy_bert(weights, config, **minilm_inputs)
    got = minilm(minilm_inputs)
    mask = minilm_inputs["padding_mask"]
    seq = max_diff(got["sequence_output"], sequence, mask)
    pool = max_diff(got["pooled_output"], pooled)
    print(f"MiniLM vs numpy reference: sequence {seq:.2e}, pooled {pool:.2e}")
    assert seq <= 1e-4 and pool <= 1e-4


@pytest.mark.assets
def test_minilm_sentence_embeddings(minilm, minilm_inputs):
    """Mean pooling + L2 norm (the sentence-transformers recipe) ranks a paraphrase first."""
    sequence = np.asarray(minilm(minilm_inputs)["sequence_output"])
    mask = minilm_inputs["padding_mask"][:, :, None]
    embeddings = (sequence * mask).sum(1) / mask.sum(1)
    embeddings /= np.linalg.norm(embeddings, axis=-1, keepdims=True)
    similarity = embeddings @ embeddings.T
    assert similarity[0, 1] > 0.4  # measured 0.58; unrelated pairs are below 0
    assert similarity[0, 1] > similarity[0, 2] + 0.3
    assert similarity[0, 1] > similarity[0, 3] + 0.3


@pytest.mark.assets
def test_minilm_config_disagreeing_with_tensors(minilm_dir, tmp_path):
    folder = tmp_path / "minilm"
    folder.mkdir()
    (folder / "model.safetensors").symlink_to(minilm_dir / "model.safetensors")
    config = json.loads((minilm_dir / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "hidden_size": 768}))
    with pytest.raises(ValueError, match="shape"):
        BertBackbone.from_huggingface(folder)
