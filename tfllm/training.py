"""Training settings under tf.distribute: strategy, optimizer, learning-rate schedule.

The loop that uses them is `tfllm.trainer.Trainer`.
"""

import functools
import json
import math
import os

import keras
import tensorflow as tf

NO_WEIGHT_DECAY = ["bias", "gamma", "beta", "scale"]  # norms and biases (BERT practice)


def make_strategy(name: str = "default") -> tf.distribute.Strategy:
    """`default`, `mirrored` (all local GPUs, else CPU), `multi_worker` (TF_CONFIG), `tpu`.

    `mirrored` is one strategy per process: a second `MirroredStrategy` numbers its
    collective all-reduces from the start again, and TensorFlow then matches them with
    the first one's (a later run of another model fails with "Shape mismatch in the
    collective instance"; tensorflow/tensorflow#62790).
    """
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        return _mirrored_strategy()
    if name == "multi_worker":
        check_tf_config(os.environ.get("TF_CONFIG", ""))
        # RING collectives work on CPU as well as GPU (NCCL is GPU only).
        options = tf.distribute.experimental.CommunicationOptions(
            implementation=tf.distribute.experimental.CommunicationImplementation.RING
        )
        return tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)
    if name == "tpu":
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver()
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
        return tf.distribute.TPUStrategy(resolver)
    raise ValueError(
        f"`strategy` must be default, mirrored, multi_worker or tpu. Received: {name!r}"
    )


@functools.cache
def _mirrored_strategy() -> tf.distribute.MirroredStrategy:
    return tf.distribute.MirroredStrategy()


def check_tf_config(text: str) -> dict:
    """Parses `TF_CONFIG` for multi-worker training; raises `ValueError` naming the problem."""
    if not text:
        raise ValueError("`strategy=multi_worker` needs the TF_CONFIG environment variable.")
    try:
        config = json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"TF_CONFIG is not valid JSON: {error}. Received: {text!r}") from None
    workers = config.get("cluster", {}).get("worker") if isinstance(config, dict) else None
    task = config.get("task", {}) if isinstance(config, dict) else {}
    if not workers or not isinstance(workers, list):
        raise ValueError(f"TF_CONFIG needs cluster.worker, a list of host:port. Received: {text!r}")
    if task.get("type") not in ("worker", "chief") or not isinstance(task.get("index"), int):
        raise ValueError(f"TF_CONFIG needs task.type and an int task.index. Received: {text!r}")
    if task["type"] == "worker" and not 0 <= task["index"] < len(workers):
        raise ValueError(
            f"TF_CONFIG task.index {task['index']} is outside the {len(workers)} workers."
        )
    return config


@keras.saving.register_keras_serializable(package="tfllm")
class WarmupDecay(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warmup to `peak`, then linear or cosine decay to `peak * end_ratio`.

    Example:
    >>> schedule = WarmupDecay(1e-3, warmup_steps=100, total_steps=1000)
    >>> [round(float(schedule(step)), 6) for step in (100, 550, 1000)]
    [0.001, 0.0005, 0.0]
    """

    def __init__(
        self,
        peak: float,
        warmup_steps: int,
        total_steps: int,
        schedule: str = "cosine",
        end_ratio: float = 0.0,
    ):
        if schedule not in ("linear", "cosine", "constant"):
            raise ValueError(
                f"`schedule` must be linear, cosine or constant. Received: {schedule!r}"
            )
        self.peak = peak
        self.warmup_steps = warmup_steps
        self.total_steps = total_steps
        self.schedule = schedule
        self.end_ratio = end_ratio

    def __call__(self, step):
        step = tf.cast(step, tf.float32)
        warmup = tf.cast(self.warmup_steps, tf.float32)
        decay_steps = tf.cast(max(self.total_steps - self.warmup_steps, 1), tf.float32)
        progress = tf.clip_by_value((step - warmup) / decay_steps, 0.0, 1.0)
        if self.schedule == "cosine":
            shape = 0.5 * (1.0 + tf.cos(math.pi * progress))
        elif self.schedule == "linear":
            shape = 1.0 - progress
        else:
            shape = tf.ones_like(progress)
        decayed = self.peak * (self.end_ratio + (1.0 - self.end_ratio) * shape)
        warming = self.peak * (step + 1.0) / tf.maximum(warmup, 1.0)
        return tf.where(step < warmup, warming, decayed)

    def get_config(self):
        return dict(
            peak=self.peak,
            warmup_steps=self.warmup_steps,
            total_steps=self.total_steps,
            schedule=self.schedule,
            end_ratio=self.end_ratio,
        )


class ClipReducedGradients:
    """Optimizer mixin: under a tf.distribute strategy, sums the gradients over the replicas
    *before* clipping them, so `global_clipnorm` (or `clipnorm`, `clipvalue`) clips the
    gradient of the global batch, as on one device.

    Keras 3 clips each replica's own gradient and sums them afterwards, in
    `_backend_update_step`: with a clip that bites, two replicas then step differently
    from one device on the same global batch. With gradient accumulation the sum is taken
    at the update step, over the accumulated gradients, as in Keras (whose accumulation
    runs under no multi-device strategy of tfllm's: `Trainer` refuses it there).
    """

    def _clip_gradients(self, grads):
        context = tf.distribute.get_replica_context()
        if context is not None and context.num_replicas_in_sync > 1:
            grads = context.all_reduce(tf.distribute.ReduceOp.SUM, grads)
        return super()._clip_gradients(grads)

    def _all_reduce_sum_gradients(self, grads_and_vars):
        """Already summed in `_clip_gradients`, which Keras calls just before this."""
        return grads_and_vars


@keras.saving.register_keras_serializable(package="tfllm")
class AdamW(ClipReducedGradients, keras.optimizers.AdamW):
    """`keras.optimizers.AdamW` (same arguments, slots and updates) on TensorFlow's fused
    Adam kernel.

    Keras writes the Adam update as about 15 small ops per variable; `ResourceApplyAdam`
    computes the same update (`lr * sqrt(1 - b2^t) / (1 - b1^t) * m / (sqrt(v) + eps)`)
    in one. `amsgrad` uses Keras's update. Weight decay stays Keras's. Clipping under a
    strategy is `ClipReducedGradients`'s.
    """

    def update_step(self, gradient, variable, learning_rate):
        if self.amsgrad:
            return super().update_step(gradient, variable, learning_rate)
        dtype = variable.dtype
        step = keras.ops.cast(self.iterations + 1, dtype)
        beta_1, beta_2 = keras.ops.cast(self.beta_1, dtype), keras.ops.cast(self.beta_2, dtype)
        index = self._get_variable_index(variable)
        tf.raw_ops.ResourceApplyAdam(
            var=variable.handle,
            m=self._momentums[index].handle,
            v=self._velocities[index].handle,
            beta1_power=keras.ops.power(beta_1, step),
            beta2_power=keras.ops.power(beta_2, step),
            lr=keras.ops.cast(learning_rate, dtype),
            beta1=beta_1,
            beta2=beta_2,
            epsilon=keras.ops.cast(self.epsilon, dtype),
            grad=keras.ops.cast(tf.convert_to_tensor(gradient), dtype),
        )


class LayerwiseLearningRates:
    """Optimizer mixin: each variable's learning rate times its own multiplier.

    The multiplier scales the variable's whole step: the optimizer update and the
    decoupled weight decay (`lr * weight_decay * w`), as per-group learning rates do in
    other frameworks. It cannot be done by scaling gradients: Adam-type updates
    `m / (sqrt(v) + eps)` are invariant to the scale of the gradient.

    Args:
        learning_rate_multipliers: `{variable.path: multiplier}`; other variables get 1.
        Everything else goes to the optimizer (AdamW, LAMB).
    """

    def __init__(self, *args, learning_rate_multipliers=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.learning_rate_multipliers = {
            str(k): float(v) for k, v in (learning_rate_multipliers or {}).items()
        }

    def build(self, variables):
        paths = [v.path for v in variables]
        repeated = sorted(
            {p for p in paths if paths.count(p) > 1} & set(self.learning_rate_multipliers)
        )
        if repeated:
            raise ValueError(
                f"`learning_rate_multipliers` names ambiguous variable paths: {repeated}"
            )
        super().build(variables)
        multipliers = self.learning_rate_multipliers
        self._multipliers = {self._var_key(v): multipliers.get(v.path, 1.0) for v in variables}

    def _apply_weight_decay(self, variables):
        """Done in `update_step` instead, where each variable's multiplier is known."""

    def update_step(self, gradient, variable, learning_rate):
        multiplier = self._multipliers.get(self._var_key(variable), 1.0)
        if multiplier != 1.0:
            learning_rate = learning_rate * multiplier
        if self.weight_decay is not None and self._use_weight_decay(variable):
            # Keras's own order: decay every variable, then the optimizer step.
            rate = keras.ops.cast(learning_rate * self.weight_decay, variable.dtype)
            self.assign_sub(variable, variable * rate)
        super().update_step(gradient, variable, learning_rate)

    def get_config(self):
        return {**super().get_config(), "learning_rate_multipliers": self.learning_rate_multipliers}


@keras.saving.register_keras_serializable(package="tfllm")
class LayerwiseAdamW(LayerwiseLearningRates, AdamW):
    """`AdamW` with per-variable learning-rate multipliers."""


@keras.saving.register_keras_serializable(package="tfllm")
class Lamb(ClipReducedGradients, keras.optimizers.Lamb):
    """`keras.optimizers.Lamb`, clipping the gradient summed over the replicas."""


@keras.saving.register_keras_serializable(package="tfllm")
class LayerwiseLamb(LayerwiseLearningRates, Lamb):
    """`keras.optimizers.Lamb` with per-variable learning-rate multipliers."""


def make_optimizer(config, learning_rate_multipliers=None) -> keras.optimizers.Optimizer:
    """AdamW or LAMB with decoupled weight decay (not on norms/biases), warmup + decay,
    global-norm clipping and gradient accumulation, from a `RunConfig`.

    `learning_rate_multipliers` (`{variable.path: factor}`, e.g. layer-wise decay) gives
    `LayerwiseAdamW` / `LayerwiseLamb` instead."""
    schedule = WarmupDecay(
        config.learning_rate,
        config.warmup_steps,
        config.steps,
        config.schedule,
        config.end_learning_rate_ratio,
    )
    kwargs = dict(
        learning_rate=schedule,
        weight_decay=config.weight_decay,
        beta_1=config.beta_1,
        beta_2=config.beta_2,
        epsilon=config.epsilon,
        global_clipnorm=config.clipnorm or None,
        gradient_accumulation_steps=(
            config.gradient_accumulation_steps if config.gradient_accumulation_steps > 1 else None
        ),
    )
    if learning_rate_multipliers:
        optimizer_class = {"adamw": LayerwiseAdamW, "lamb": LayerwiseLamb}
        kwargs["learning_rate_multipliers"] = learning_rate_multipliers
    else:
        optimizer_class = {"adamw": AdamW, "lamb": Lamb}
    optimizer = optimizer_class[config.optimizer](**kwargs)
    optimizer.exclude_from_weight_decay(var_names=NO_WEIGHT_DECAY)
    return optimizer
