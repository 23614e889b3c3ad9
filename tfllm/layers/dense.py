"""`Dense` whose int8 kernel is stored `(units, input_dim)`, so decoding reads it in order."""

import keras
import numpy as np
import tensorflow as tf
from keras import ops

from tfllm.internals import in_xla_context, optimization_barrier

# Under XLA, products with at most this many rows run one matrix-vector product per row.
GEMV_ROWS = 8


def matmul_transposed(inputs, kernel):
    """`inputs @ kernel.T`: `(..., K)` and `(N, K)` -> `(..., N)`.

    An int8 `kernel` is cast to `inputs`' float dtype in the graph (int8 `inputs`: an int8
    product with int32 sums). Under XLA, a product of at most `GEMV_ROWS` rows (decoding
    steps) runs as one matrix-vector product per row with the cast fused into it: each
    reads the kernel's rows in order, in their stored dtype. XLA compiles a product with
    more rows and a fused cast into a slow loop, and would hoist a loop-invariant cast out
    of `generate`'s decoding loop (reading a float32 copy every step): a barrier tying
    the kernel to the inputs keeps the cast in the loop.
    """
    inputs = tf.convert_to_tensor(inputs)
    flat = tf.reshape(inputs, [-1, tf.shape(inputs)[-1]])  # (R, K), R = B * T
    rows = flat.shape[0]
    if inputs.dtype == tf.int8:
        outputs = tf.matmul(flat, kernel, transpose_b=True, output_type=tf.int32)
    elif rows is not None and rows <= GEMV_ROWS and in_xla_context():
        kernel, flat = optimization_barrier(kernel, flat)
        kernel = tf.cast(kernel, inputs.dtype)
        outputs = tf.concat(
            [tf.matmul(flat[i : i + 1], kernel, transpose_b=True) for i in range(rows)], 0
        )
    else:
        outputs = tf.matmul(flat, tf.cast(kernel, inputs.dtype), transpose_b=True)  # (R, N)
    return tf.reshape(outputs, tf.concat([tf.shape(inputs)[:-1], tf.shape(kernel)[:1]], 0))


@keras.saving.register_keras_serializable(package="tfllm")
class Dense(keras.layers.Dense):
    """`keras.layers.Dense` (same arguments, float weights and quantize API) whose int8
    kernel is stored transposed, `(units, input_dim)`.

    Float kernels keep Keras's `(input_dim, units)` layout, so float checkpoints, presets
    and converted weights are unchanged. `quantize("int8", config=...)` quantizes as
    Keras's `Dense` (per output channel absmax, one float scale per unit; activations
    per token unless the config's `activation_quantizer` is `None`) and gives the same
    outputs, but keeps the int8 values `(units, input_dim)`: the product then contracts
    the kernel's minor axis, rows read in order, which lets XLA decode from the int8
    bytes (`matmul_transposed`; timings in BENCHMARKS.md, "Quantized inference").
    LoRA, `.keras` files and SavedModels work as with Keras's `Dense`; `kernel` of an
    int8 layer is the int8 values viewed `(input_dim, units)`.

    Call: `(..., input_dim)` -> `(..., units)`.

    Example:
    >>> layer = Dense(3)
    >>> layer.build((None, 4))
    >>> layer.quantize("int8")
    >>> tuple(layer._kernel.shape), tuple(layer(np.ones((2, 4), "float32")).shape)
    ((3, 4), (2, 3))
    """

    @property
    def kernel(self):
        if self.quantization_mode == "int8":
            return ops.transpose(self._kernel)
        return super().kernel

    def quantize(self, mode=None, type_check=True, config=None):
        """Keras's `Dense.quantize`; `"int8"` stores the kernel `(units, input_dim)`."""
        if mode != "int8":
            return super().quantize(mode, type_check=False, config=config)
        self.quantization_config = config
        quantizer = keras.quantizers.QuantizationConfig.weight_quantizer_or_default(
            config, keras.quantizers.AbsMaxQuantizer(axis=0)
        )
        values, scale = quantizer(self._kernel, to_numpy=True)  # (K, N) int8, (1, N)
        del self._kernel
        self.quantized_build(values.shape, mode, config)
        self._kernel.assign(np.transpose(values))
        self.kernel_scale.assign(np.squeeze(scale, axis=0))
        if self.dtype_policy.quantization_mode is None:
            self.dtype_policy = keras.dtype_policies.get(f"int8_from_{self.dtype_policy.name}")

    def _int8_build(self, kernel_shape, config=None):
        """Keras's int8 variables; `kernel_shape` is Keras's `(input_dim, units)`."""
        input_dim, units = kernel_shape
        super()._int8_build((units, input_dim), config)

    def _int8_call(self, inputs, training=None):
        @ops.custom_gradient
        def quantized_matmul(inputs, kernel, kernel_scale):
            # Keras's int8 product: gradients reach the inputs through the dequantized
            # kernel; the int8 weights are frozen.
            def grad_fn(*args, upstream=None):
                upstream = args[0] if upstream is None else upstream
                float_kernel = ops.cast(kernel, self.compute_dtype) / kernel_scale[:, None]
                return ops.matmul(upstream, float_kernel), None, None

            output_scale = kernel_scale
            if self.inputs_quantizer:
                inputs, inputs_scale = self.inputs_quantizer(inputs, axis=-1)
                output_scale = ops.multiply(output_scale, inputs_scale)
            x = ops.cast(matmul_transposed(inputs, kernel), self.compute_dtype)
            return ops.divide(x, output_scale), grad_fn

        x = quantized_matmul(
            inputs, ops.convert_to_tensor(self._kernel), ops.convert_to_tensor(self.kernel_scale)
        )
        if self.lora_enabled:
            lora_x = ops.matmul(ops.matmul(inputs, self.lora_kernel_a), self.lora_kernel_b)
            x = ops.cast(
                ops.add(x, (self.lora_alpha / self.lora_rank) * lora_x), self.compute_dtype
            )
        if self.bias is not None:
            x = ops.add(x, self.bias)
        if self.activation is not None:
            x = self.activation(x)
        return x

    def _get_kernel_with_merged_lora(self):
        """`(kernel, scale, None)` to save: an int8 kernel with LoRA folded in and
        requantized per unit, as Keras's, but `(units, input_dim)`."""
        if self.quantization_mode != "int8" or not self.lora_enabled:
            return super()._get_kernel_with_merged_lora()
        float_kernel = ops.cast(self._kernel, "float32") / self.kernel_scale[:, None]  # (N, K)
        delta = (self.lora_alpha / self.lora_rank) * ops.matmul(
            self.lora_kernel_a, self.lora_kernel_b
        )  # (K, N)
        merged = ops.add(float_kernel, ops.transpose(delta))
        values, scale = keras.quantizers.abs_max_quantize(
            merged, axis=-1, value_range=(-127, 127), dtype="int8", to_numpy=True
        )
        return values, np.squeeze(scale, axis=-1), None
