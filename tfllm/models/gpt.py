"""GPT decoder backbone (GPT-2 layout by default; RoPE / RMSNorm / SwiGLU / GQA options)."""

import keras
from keras import ops

from tfllm.layers import (
    Dropout,
    PositionEmbedding,
    SinusoidalPositionEncoding,
    TokenEmbedding,
    TransformerDecoderBlock,
)
from tfllm.layers.embedding import segment_positions
from tfllm.layers.transformer import NORMALIZATIONS, check_choice, normalization_layer
from tfllm.models.backbone import Backbone, check_heads, check_positive_int

POSITION_EMBEDDINGS = ("learned", "sinusoidal", "rope")


@keras.saving.register_keras_serializable(package="tfllm")
class GPTBackbone(Backbone):
    """Decoder-only transformer: embeddings, pre-norm causal blocks, final norm.

    Args:
        vocabulary_size: number of token ids.
        num_layers, num_heads, hidden_dim, intermediate_dim: transformer sizes.
        max_sequence_length: longest sequence (learned positions, KV cache length).
        num_key_value_heads: grouped-query attention heads (`None`: `num_heads`).
        position_embedding: "learned" (GPT-2), "sinusoidal" or "rope".
        rope_max_wavelength: RoPE base, used with `position_embedding="rope"`.
        normalization: "layer_norm" (GPT-2) or "rms_norm".
        activation: feed-forward activation, e.g. "gelu_approximate" (GPT-2) or "swiglu".
        use_bias: biases in attention and feed-forward projections.
        tie_word_embeddings: the output projection reuses the token embedding table.
        dropout: dropout rate on embeddings, attention and residuals.
        layer_norm_epsilon: epsilon of all norms.
        packed_sequences: add a `segment_ids` input `(B, T)` of document ids; tokens then
            attend only within their own document, and each document's positions start
            at 0 (`tfllm.layers.embedding.segment_positions`), so a packed document gives
            the outputs it gives alone.
        dtype: dtype policy of all layers.

    Inputs: dict of `token_ids` and `padding_mask` `(B, T)` int (and `segment_ids`).
    Output: `sequence_output` `(B, T, hidden_dim)`; logits come from
    `token_embedding(sequence_output, reverse=True)`.

    Example:
    >>> model = GPTBackbone.from_preset("gpt_tiny")
    >>> ids = np.ones((2, 8), "int32")
    >>> tuple(model({"token_ids": ids, "padding_mask": ids}).shape)
    (2, 8, 64)
    """

    config_keys = (
        "vocabulary_size",
        "num_layers",
        "num_heads",
        "hidden_dim",
        "intermediate_dim",
        "max_sequence_length",
        "num_key_value_heads",
        "position_embedding",
        "rope_max_wavelength",
        "normalization",
        "activation",
        "use_bias",
        "tie_word_embeddings",
        "dropout",
        "layer_norm_epsilon",
        "packed_sequences",
    )
    preset_family = "gpt"

    def __init__(
        self,
        vocabulary_size: int,
        num_layers: int,
        num_heads: int,
        hidden_dim: int,
        intermediate_dim: int,
        max_sequence_length: int = 1024,
        num_key_value_heads: int | None = None,
        position_embedding: str = "learned",
        rope_max_wavelength: float = 10000.0,
        normalization: str = "layer_norm",
        activation: str = "gelu_approximate",
        use_bias: bool = True,
        tie_word_embeddings: bool = True,
        dropout: float = 0.1,
        layer_norm_epsilon: float = 1e-5,
        packed_sequences: bool = False,
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
        )
        check_heads(hidden_dim, num_heads)
        check_choice("position_embedding", position_embedding, POSITION_EMBEDDINGS)
        check_choice("normalization", normalization, NORMALIZATIONS)
        init = keras.initializers.RandomNormal(stddev=0.02)
        token_embedding = TokenEmbedding(
            vocabulary_size,
            hidden_dim,
            tie_weights=tie_word_embeddings,
            embeddings_initializer=init,
            dtype=dtype,
            name="token_embedding",
        )
        positions = None
        if position_embedding == "learned":
            positions = PositionEmbedding(
                max_sequence_length, initializer=init, dtype=dtype, name="position_embedding"
            )
        elif position_embedding == "sinusoidal":
            positions = SinusoidalPositionEncoding(dtype=dtype, name="position_embedding")
        embeddings_dropout = Dropout(dropout, dtype=dtype, name="embeddings_dropout")
        blocks = [
            TransformerDecoderBlock(
                num_heads,
                intermediate_dim,
                num_key_value_heads=num_key_value_heads,
                dropout=dropout,
                activation=activation,
                normalization=normalization,
                layer_norm_epsilon=layer_norm_epsilon,
                use_bias=use_bias,
                rope_max_wavelength=rope_max_wavelength if position_embedding == "rope" else None,
                kernel_initializer=init,
                dtype=dtype,
                name=f"transformer_layer_{i}",
            )
            for i in range(num_layers)
        ]
        final_norm = normalization_layer(normalization, layer_norm_epsilon, dtype, "final_norm")

        keys = ("token_ids", "padding_mask") + (("segment_ids",) if packed_sequences else ())
        inputs = {key: keras.Input(shape=(None,), dtype="int32", name=key) for key in keys}
        x = token_embedding(inputs["token_ids"])  # (B, T, d)
        # Packed documents each start at position 0, as if alone in the row.
        position_ids = segment_positions(inputs["segment_ids"]) if packed_sequences else None
        if positions is not None:
            x = x + positions(x, position_ids=position_ids)
        x = embeddings_dropout(x)
        for block in blocks:
            x = block(
                x,
                padding_mask=inputs["padding_mask"],
                segment_ids=inputs.get("segment_ids"),
                position_ids=position_ids,
            )
        super().__init__(inputs=inputs, outputs=final_norm(x), dtype=dtype, **kwargs)

        self.vocabulary_size = vocabulary_size
        self.num_layers = num_layers
        self.num_heads = num_heads
        self.hidden_dim = hidden_dim
        self.intermediate_dim = intermediate_dim
        self.max_sequence_length = max_sequence_length
        self.num_key_value_heads = num_key_value_heads
        self.position_embedding = position_embedding
        self.rope_max_wavelength = rope_max_wavelength
        self.normalization = normalization
        self.activation = activation
        self.use_bias = use_bias
        self.tie_word_embeddings = tie_word_embeddings
        self.dropout = dropout
        self.layer_norm_epsilon = layer_norm_epsilon
        self.packed_sequences = packed_sequences
        self.token_embedding = token_embedding
        self.position_layer = positions
        self.transformer_layers = blocks
        self.final_norm = final_norm

    def init_cache(self, batch_size, max_length=None):
        """Zero KV cache: per layer a pair `(key, value)`, each `(B, K, max_length, head_dim)`.

        `K` is `num_key_value_heads` (or `num_heads`). Separate tensors, not one stacked
        array: a decoding step then writes each in place (XLA) or copies only the rows it
        needs, instead of slicing and re-stacking the whole cache.
        """
        max_length = self.max_sequence_length if max_length is None else max_length
        kv_heads = self.num_key_value_heads or self.num_heads
        shape = (batch_size, kv_heads, max_length, self.hidden_dim // self.num_heads)
        return tuple(
            (ops.zeros(shape, self.compute_dtype), ops.zeros(shape, self.compute_dtype))
            for _ in range(self.num_layers)
        )

    def call_with_cache(
        self, token_ids, cache, cache_update_index, padding_mask=None, position_ids=None
    ):
        """Runs `T` new tokens against a KV cache (incremental decoding).

        Args:
            token_ids: `(B, T)` new tokens, at positions `cache_update_index + t`.
            cache: from `init_cache` or an earlier call: `num_layers` pairs of
                `(B, K, S, head_dim)` keys and values.
            cache_update_index: int or scalar tensor, where the new keys/values go.
            padding_mask: optional `(B, S)` over all cache positions (0 = padding).
            position_ids: optional `(B, T)` positions of the new tokens when they differ
                from `cache_update_index + t` (rows of a batch padded differently; see
                `tfllm.generation`). Cache slots and the causal mask still use the index.

        Returns:
            `(sequence_output (B, T, hidden_dim), updated cache)`.
        """
        x = self.token_embedding(token_ids)
        if self.position_layer is not None:
            x = x + self.position_layer(
                x, start_index=cache_update_index, position_ids=position_ids
            )
        updated = []
        for block, layer_cache in zip(self.transformer_layers, cache, strict=True):
            x, layer_cache = block(
                x,
                padding_mask=padding_mask,
                cache=layer_cache,
                cache_update_index=cache_update_index,
                position_ids=position_ids,
            )
            updated.append(layer_cache)
        return self.final_norm(x), tuple(updated)

    @classmethod
    def from_huggingface(cls, path, **overrides) -> "GPTBackbone":
        """Loads a local Hugging Face GPT-2 folder (`config.json` + `model.safetensors`)."""
        from tfllm.models.convert import gpt_from_huggingface

        return gpt_from_huggingface(path, **overrides)

    @classmethod
    def from_keras_hub(cls, backbone) -> "GPTBackbone":
        """Copies the weights of a `keras_hub.models.GPT2Backbone` into a new backbone."""
        from tfllm.models.convert import gpt_from_keras_hub

        return gpt_from_keras_hub(backbone)
