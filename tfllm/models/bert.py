"""BERT encoder backbone."""

from types import SimpleNamespace

import keras

from tfllm.layers import (
    Dense,
    Dropout,
    LayerNormalization,
    PositionEmbedding,
    TokenEmbedding,
    TransformerEncoderBlock,
)
from tfllm.models.backbone import Backbone, check_heads, check_positive_int


@keras.saving.register_keras_serializable(package="tfllm")
class BertBackbone(Backbone):
    """BERT: token + position + segment embeddings, LN, post-norm encoder blocks, pooler.

    Args:
        vocabulary_size: number of token ids.
        num_layers, num_heads, hidden_dim, intermediate_dim: transformer sizes.
        max_sequence_length: number of learned positions.
        num_segments: number of segment (token type) ids.
        dropout: dropout rate everywhere (embeddings, attention, residuals).
        activation: feed-forward activation ("gelu" is exact, as in Hugging Face BERT;
            keras-hub uses "gelu_approximate").
        layer_norm_epsilon: epsilon of all layer norms.
        dtype: dtype policy of all layers (e.g. "mixed_bfloat16").

    Inputs: dict of `token_ids`, `segment_ids`, `padding_mask`, each `(B, T)` int.
    Outputs: dict of `sequence_output` `(B, T, hidden_dim)` and `pooled_output`
    `(B, hidden_dim)` (tanh dense on the first token).

    Example:
    >>> model = BertBackbone.from_preset("bert_tiny")
    >>> ids = np.ones((2, 8), "int32")
    >>> out = model({"token_ids": ids, "segment_ids": 0 * ids, "padding_mask": ids})
    >>> tuple(out["sequence_output"].shape)
    (2, 8, 64)
    """

    config_keys = (
        "vocabulary_size",
        "num_layers",
        "num_heads",
        "hidden_dim",
        "intermediate_dim",
        "max_sequence_length",
        "num_segments",
        "dropout",
        "activation",
        "layer_norm_epsilon",
    )
    preset_family = "bert"

    def __init__(
        self,
        vocabulary_size: int,
        num_layers: int,
        num_heads: int,
        hidden_dim: int,
        intermediate_dim: int,
        max_sequence_length: int = 512,
        num_segments: int = 2,
        dropout: float = 0.1,
        activation: str = "gelu",
        layer_norm_epsilon: float = 1e-12,
        dtype=None,
        **kwargs,
    ):
        check_positive_int(
            vocabulary_size=vocabulary_size,
            num_layers=num_layers,
            num_heads=num_heads,
            hidden_dim=hidden_dim,
            intermediate_dim=intermediate_dim,
            max_sequence_length=max_sequence_length,
            num_segments=num_segments,
        )
        check_heads(hidden_dim, num_heads)
        init = keras.initializers.TruncatedNormal(stddev=0.02)
        token_embedding = TokenEmbedding(
            vocabulary_size,
            hidden_dim,
            embeddings_initializer=init,
            dtype=dtype,
            name="token_embedding",
        )
        position_embedding = PositionEmbedding(
            max_sequence_length, initializer=init, dtype=dtype, name="position_embedding"
        )
        segment_embedding = keras.layers.Embedding(
            num_segments,
            hidden_dim,
            embeddings_initializer=init,
            dtype=dtype,
            name="segment_embedding",
        )
        embeddings_norm = LayerNormalization(
            epsilon=layer_norm_epsilon, dtype=dtype, name="embeddings_norm"
        )
        embeddings_dropout = Dropout(dropout, dtype=dtype, name="embeddings_dropout")
        blocks = [
            TransformerEncoderBlock(
                num_heads,
                intermediate_dim,
                dropout=dropout,
                activation=activation,
                layer_norm_epsilon=layer_norm_epsilon,
                kernel_initializer=init,
                dtype=dtype,
                name=f"transformer_layer_{i}",
            )
            for i in range(num_layers)
        ]
        pooled_dense = Dense(
            hidden_dim, activation="tanh", kernel_initializer=init, dtype=dtype, name="pooled_dense"
        )

        inputs = {
            key: keras.Input(shape=(None,), dtype="int32", name=key)
            for key in ("token_ids", "segment_ids", "padding_mask")
        }
        parts = SimpleNamespace(
            token_embedding=token_embedding,
            position_embedding=position_embedding,
            segment_embedding=segment_embedding,
            embeddings_norm=embeddings_norm,
            embeddings_dropout=embeddings_dropout,
            transformer_layers=blocks,
        )
        x = _encode(parts, inputs)
        outputs = {"sequence_output": x, "pooled_output": pooled_dense(x[:, 0, :])}
        super().__init__(inputs=inputs, outputs=outputs, dtype=dtype, **kwargs)

        self.vocabulary_size = vocabulary_size
        self.num_layers = num_layers
        self.num_heads = num_heads
        self.hidden_dim = hidden_dim
        self.intermediate_dim = intermediate_dim
        self.max_sequence_length = max_sequence_length
        self.num_segments = num_segments
        self.dropout = dropout
        self.activation = activation
        self.layer_norm_epsilon = layer_norm_epsilon
        self.token_embedding = token_embedding
        self.position_embedding = position_embedding
        self.segment_embedding = segment_embedding
        self.embeddings_norm = embeddings_norm
        self.embeddings_dropout = embeddings_dropout
        self.transformer_layers = blocks
        self.pooled_dense = pooled_dense

    def sequence_output_at(self, inputs: dict, positions):
        """`sequence_output` at `positions (B, P)` only: `(B, P, hidden_dim)`.

        Equal to gathering those rows of `self(inputs)["sequence_output"]`, but the last
        block computes only them (its keys and values still read every token): a masked
        LM at 15% masking skips about 70% of the last block. Works on `keras.Input`s, so
        task models build their graphs with it.
        """
        return _encode(self, inputs, query_positions=positions)

    @classmethod
    def from_huggingface(cls, path, **overrides) -> "BertBackbone":
        """Loads a local Hugging Face BERT folder (`config.json` + `model.safetensors`).

        `overrides` replace converted constructor arguments (e.g. `dropout=0.0`).
        """
        from tfllm.models.convert import bert_from_huggingface

        return bert_from_huggingface(path, **overrides)

    @classmethod
    def from_keras_hub(cls, backbone) -> "BertBackbone":
        """Copies the weights of a `keras_hub.models.BertBackbone` into a new backbone."""
        from tfllm.models.convert import bert_from_keras_hub

        return bert_from_keras_hub(backbone)


def _encode(parts, inputs: dict, query_positions=None):
    """Embeddings and encoder blocks of `parts` (a `BertBackbone` or its layers).

    Returns `(B, T, d)`, or `(B, P, d)` at `query_positions (B, P)` (last block only).
    """
    tokens = parts.token_embedding(inputs["token_ids"])  # (B, T, d)
    x = tokens + parts.position_embedding(tokens) + parts.segment_embedding(inputs["segment_ids"])
    x = parts.embeddings_dropout(parts.embeddings_norm(x))
    *blocks, last = parts.transformer_layers
    for block in blocks:
        x = block(x, padding_mask=inputs["padding_mask"])
    return last(x, padding_mask=inputs["padding_mask"], query_positions=query_positions)
