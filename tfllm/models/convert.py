"""Weights from local Hugging Face folders (safetensors, no torch) and from keras-hub models.

Our attention keeps queries, keys and values in one fused `qkv` kernel `(d, (N + 2K) * hs)`,
so separate q/k/v projections are concatenated (q, then k, then v) on the way in.
"""

import json
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file

from tfllm.models.bert import BertBackbone
from tfllm.models.gpt import GPTBackbone

HF_ACTIVATIONS = {
    "gelu": "gelu",
    "gelu_new": "gelu_approximate",
    "gelu_pytorch_tanh": "gelu_approximate",
    "gelu_fast": "gelu_approximate",
    "relu": "relu",
    "silu": "silu",
    "swish": "silu",
}


def read_huggingface_folder(path) -> tuple[dict, dict[str, np.ndarray]]:
    """Reads `config.json` and all safetensors weights of a local checkpoint folder.

    Returns `(config, weights)`; weight names lose a leading model prefix (`bert.`,
    `transformer.`) so both bare and task checkpoints load.
    """
    folder = Path(path)
    if not folder.is_dir():
        raise ValueError(f"`path` must be a checkpoint folder. Received: {str(path)!r}")
    index = folder / "model.safetensors.index.json"
    if index.exists():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    else:
        shards = ["model.safetensors"]
    missing = [name for name in ["config.json", *shards] if not (folder / name).exists()]
    if missing:
        raise ValueError(
            f"Checkpoint folder {str(folder)!r} lacks {missing}: it needs config.json and "
            "model.safetensors (or a sharded index). "
            f"Found: {sorted(p.name for p in folder.iterdir())}"
        )
    config = json.loads((folder / "config.json").read_text())
    weights = {}
    for shard in shards:
        weights.update(load_file(folder / shard))
    prefixes = ("bert.", "transformer.")
    weights = {
        next((k[len(p) :] for p in prefixes if k.startswith(p)), k): v for k, v in weights.items()
    }
    return config, weights


def _assign(variable, value, source: str):
    value = np.asarray(value)
    if tuple(variable.shape) != value.shape:
        raise ValueError(
            f"Checkpoint tensor {source!r} has shape {value.shape} but {variable.path} needs "
            f"{tuple(variable.shape)}: the checkpoint does not match its config."
        )
    variable.assign(value.astype(variable.dtype))


def _tensor(weights: dict, key: str) -> np.ndarray:
    if key not in weights:
        raise ValueError(f"Checkpoint lacks tensor {key!r} (has {len(weights)} tensors).")
    return weights[key]


def _config_value(config: dict, key: str, model_type: str):
    if key not in config:
        raise ValueError(f"{model_type} config.json lacks {key!r}.")
    return config[key]


def _activation(config: dict, key: str) -> str:
    name = config.get(key, "gelu")
    if name not in HF_ACTIVATIONS:
        raise ValueError(f"Unsupported `{key}` in config.json. Received: {name!r}")
    return HF_ACTIVATIONS[name]


def _check_model_type(config: dict, expected: str):
    if config.get("model_type", expected) != expected:
        raise ValueError(
            f"Expected a {expected!r} checkpoint. Received: model_type={config['model_type']!r}"
        )


def _layer_norm(layer, weights: dict, prefix: str):
    scale, shift = ("gamma", "beta") if f"{prefix}.gamma" in weights else ("weight", "bias")
    _assign(layer.gamma, _tensor(weights, f"{prefix}.{scale}"), f"{prefix}.{scale}")
    _assign(layer.beta, _tensor(weights, f"{prefix}.{shift}"), f"{prefix}.{shift}")


def _dense(layer, weights: dict, prefix: str, transpose: bool = True):
    """torch `Linear` stores `(out, in)`; GPT-2's `Conv1D` already stores `(in, out)`."""
    kernel = _tensor(weights, f"{prefix}.weight")
    _assign(layer.kernel, kernel.T if transpose else kernel, f"{prefix}.weight")
    _assign(layer.bias, _tensor(weights, f"{prefix}.bias"), f"{prefix}.bias")


def bert_from_huggingface(path, **overrides) -> BertBackbone:
    """`BertBackbone` with the weights of a local Hugging Face BERT checkpoint folder."""
    return _bert_backbone(*read_huggingface_folder(path), overrides)


def bert_task_from_huggingface(path, **overrides):
    """`(backbone, task)` of a Hugging Face BERT folder; `task` holds its pretraining heads.

    With the masked-LM head (`cls.predictions.*`, decoder tied to the word embeddings) the
    task is a `MaskedLM`, or a `BertPretrainer` when next-sentence prediction
    (`cls.seq_relationship.*`) is there too; without it, `task` is `None`.
    """
    from tfllm.models.tasks import BertPretrainer, MaskedLM  # tasks may import presets

    config, weights = read_huggingface_folder(path)
    backbone = _bert_backbone(config, weights, overrides)
    if not any(key.startswith("cls.predictions.") for key in weights):
        return backbone, None
    if any(key.startswith("cls.seq_relationship.") for key in weights):
        task = BertPretrainer(backbone)
        _dense(task.nsp_head, weights, "cls.seq_relationship")
    else:
        task = MaskedLM(backbone)
    head, p = task.mlm_head, "cls.predictions"
    _dense(head.transform, weights, f"{p}.transform.dense")
    _layer_norm(head.layer_norm, weights, f"{p}.transform.LayerNorm")
    bias = f"{p}.bias" if f"{p}.bias" in weights else f"{p}.decoder.bias"
    _assign(head.output_bias, _tensor(weights, bias), bias)
    decoder = weights.get(f"{p}.decoder.weight")
    embeddings = weights["embeddings.word_embeddings.weight"]
    if decoder is not None and not np.array_equal(decoder, embeddings):
        raise ValueError(
            f"Checkpoint {str(path)!r} has a masked-LM decoder that is not tied to the word "
            "embeddings; tfllm's MaskedLMHead reuses the embedding table."
        )
    return backbone, task


def _bert_backbone(config: dict, weights: dict, overrides: dict) -> BertBackbone:
    _check_model_type(config, "bert")
    if config.get("position_embedding_type", "absolute") != "absolute":
        raise ValueError(
            "Only absolute position embeddings are supported. "
            f"Received: position_embedding_type={config['position_embedding_type']!r}"
        )
    kwargs = dict(
        vocabulary_size=_config_value(config, "vocab_size", "BERT"),
        num_layers=_config_value(config, "num_hidden_layers", "BERT"),
        num_heads=_config_value(config, "num_attention_heads", "BERT"),
        hidden_dim=_config_value(config, "hidden_size", "BERT"),
        intermediate_dim=_config_value(config, "intermediate_size", "BERT"),
        max_sequence_length=config.get("max_position_embeddings", 512),
        num_segments=config.get("type_vocab_size", 2),
        dropout=config.get("hidden_dropout_prob", 0.1),
        activation=_activation(config, "hidden_act"),
        layer_norm_epsilon=config.get("layer_norm_eps", 1e-12),
    )
    model = BertBackbone(**{**kwargs, **overrides})
    emb = "embeddings"
    _assign(
        model.token_embedding.embeddings,
        _tensor(weights, f"{emb}.word_embeddings.weight"),
        "word_embeddings",
    )
    _assign(
        model.position_embedding.embeddings,
        _tensor(weights, f"{emb}.position_embeddings.weight"),
        "position_embeddings",
    )
    _assign(
        model.segment_embedding.embeddings,
        _tensor(weights, f"{emb}.token_type_embeddings.weight"),
        "token_type_embeddings",
    )
    _layer_norm(model.embeddings_norm, weights, f"{emb}.LayerNorm")
    for i, block in enumerate(model.transformer_layers):
        p = f"encoder.layer.{i}"
        parts = [f"{p}.attention.self.{name}" for name in ("query", "key", "value")]
        qkv = np.concatenate([_tensor(weights, f"{part}.weight").T for part in parts], axis=1)
        qkv_bias = np.concatenate([_tensor(weights, f"{part}.bias") for part in parts])
        _assign(block.attention.qkv_dense.kernel, qkv, f"{p}.attention.self.*.weight")
        _assign(block.attention.qkv_dense.bias, qkv_bias, f"{p}.attention.self.*.bias")
        _dense(block.attention.output_dense, weights, f"{p}.attention.output.dense")
        _layer_norm(block.attention_norm, weights, f"{p}.attention.output.LayerNorm")
        _dense(block.feedforward.intermediate_dense, weights, f"{p}.intermediate.dense")
        _dense(block.feedforward.output_dense, weights, f"{p}.output.dense")
        _layer_norm(block.feedforward_norm, weights, f"{p}.output.LayerNorm")
    if "pooler.dense.weight" in weights:  # encoder-only checkpoints may lack a pooler
        _dense(model.pooled_dense, weights, "pooler.dense")
    return model


def gpt_from_huggingface(path, **overrides) -> GPTBackbone:
    """`GPTBackbone` with the weights of a local Hugging Face GPT-2 checkpoint folder."""
    config, weights = read_huggingface_folder(path)
    _check_model_type(config, "gpt2")
    hidden_dim = _config_value(config, "n_embd", "GPT-2")
    kwargs = dict(
        vocabulary_size=_config_value(config, "vocab_size", "GPT-2"),
        num_layers=_config_value(config, "n_layer", "GPT-2"),
        num_heads=_config_value(config, "n_head", "GPT-2"),
        hidden_dim=hidden_dim,
        intermediate_dim=config.get("n_inner") or 4 * hidden_dim,
        max_sequence_length=config.get("n_positions", 1024),
        dropout=config.get("resid_pdrop", 0.1),
        activation=_activation(config, "activation_function"),
        layer_norm_epsilon=config.get("layer_norm_epsilon", 1e-5),
    )
    model = GPTBackbone(**{**kwargs, **overrides})
    _assign(model.token_embedding.embeddings, _tensor(weights, "wte.weight"), "wte.weight")
    _assign(model.position_layer.embeddings, _tensor(weights, "wpe.weight"), "wpe.weight")
    for i, block in enumerate(model.transformer_layers):
        p = f"h.{i}"
        _layer_norm(block.attention_norm, weights, f"{p}.ln_1")
        _dense(block.attention.qkv_dense, weights, f"{p}.attn.c_attn", transpose=False)
        _dense(block.attention.output_dense, weights, f"{p}.attn.c_proj", transpose=False)
        _layer_norm(block.feedforward_norm, weights, f"{p}.ln_2")
        _dense(block.feedforward.intermediate_dense, weights, f"{p}.mlp.c_fc", transpose=False)
        _dense(block.feedforward.output_dense, weights, f"{p}.mlp.c_proj", transpose=False)
    _layer_norm(model.final_norm, weights, "ln_f")
    return model


def _copy_keras_hub_attention(ours, theirs):
    """keras-hub keeps q/k/v kernels as `(d, N, hs)` and the output as `(N, hs, d)`."""
    dense = (theirs.query_dense, theirs.key_dense, theirs.value_dense)
    kernel = np.concatenate(
        [np.reshape(d.kernel.numpy(), (d.kernel.shape[0], -1)) for d in dense], 1
    )
    bias = np.concatenate([np.reshape(d.bias.numpy(), (-1,)) for d in dense])
    _assign(ours.qkv_dense.kernel, kernel, "query/key/value kernels")
    _assign(ours.qkv_dense.bias, bias, "query/key/value biases")
    out = theirs.output_dense
    _assign(
        ours.output_dense.kernel,
        np.reshape(out.kernel.numpy(), (-1, out.kernel.shape[-1])),
        "output kernel",
    )
    _assign(ours.output_dense.bias, out.bias.numpy(), "output bias")


def _copy_layer(ours, theirs):
    for mine, other in zip(ours.weights, theirs.weights, strict=True):
        _assign(mine, other.numpy(), other.path)


def _copy_keras_hub_block(ours, theirs):
    _copy_keras_hub_attention(ours.attention, theirs._self_attention_layer)
    _copy_layer(ours.attention_norm, theirs._self_attention_layer_norm)
    _copy_layer(ours.feedforward.intermediate_dense, theirs._feedforward_intermediate_dense)
    _copy_layer(ours.feedforward.output_dense, theirs._feedforward_output_dense)
    _copy_layer(ours.feedforward_norm, theirs._feedforward_layer_norm)


def bert_from_keras_hub(backbone) -> BertBackbone:
    """`BertBackbone` with the weights of a `keras_hub.models.BertBackbone`."""
    model = BertBackbone(
        vocabulary_size=backbone.vocabulary_size,
        num_layers=backbone.num_layers,
        num_heads=backbone.num_heads,
        hidden_dim=backbone.hidden_dim,
        intermediate_dim=backbone.intermediate_dim,
        max_sequence_length=backbone.max_sequence_length,
        num_segments=backbone.num_segments,
        dropout=backbone.dropout,
        activation="gelu_approximate",  # keras-hub's BERT uses the tanh GELU
    )
    _copy_layer(model.token_embedding, backbone.get_layer("token_embedding"))
    _copy_layer(model.position_embedding, backbone.get_layer("position_embedding"))
    _copy_layer(model.segment_embedding, backbone.get_layer("segment_embedding"))
    _copy_layer(model.embeddings_norm, backbone.get_layer("embeddings_layer_norm"))
    for ours, theirs in zip(model.transformer_layers, backbone.transformer_layers, strict=True):
        _copy_keras_hub_block(ours, theirs)
    _copy_layer(model.pooled_dense, backbone.get_layer("pooled_dense"))
    return model


def gpt_from_keras_hub(backbone) -> GPTBackbone:
    """`GPTBackbone` with the weights of a `keras_hub.models.GPT2Backbone`."""
    model = GPTBackbone(
        vocabulary_size=backbone.vocabulary_size,
        num_layers=backbone.num_layers,
        num_heads=backbone.num_heads,
        hidden_dim=backbone.hidden_dim,
        intermediate_dim=backbone.intermediate_dim,
        max_sequence_length=backbone.max_sequence_length,
        dropout=backbone.dropout,
    )
    _copy_layer(model.token_embedding, backbone.token_embedding)
    _copy_layer(model.position_layer, backbone.position_embedding)
    for ours, theirs in zip(model.transformer_layers, backbone.transformer_layers, strict=True):
        _copy_keras_hub_block(ours, theirs)
    _copy_layer(model.final_norm, backbone.layer_norm)
    return model
