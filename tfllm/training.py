"""Training under tf.distribute: strategy, optimizer, schedule, and a resumable loop.

The loop runs Keras's own `model.train_step` (compiled loss, metrics, loss scaling,
gradient accumulation and clipping of the optimizer) under `strategy.run`. It is our own
loop rather than `model.fit` because `fit` fails under `MultiWorkerMirroredStrategy` in
Keras 3 (keras-team/keras#20585) and cannot checkpoint its data iterator; here each
worker's `tf.data` iterator is saved with the weights (`ReplicaInput`), so a killed run
resumes at the same step and the same data position without rereading the data.
"""

import json
import logging
import math
import os
import tempfile
import time
from pathlib import Path

import keras
import tensorflow as tf

from tfllm.progress import StepProgress
from tfllm.replica_input import ReplicaInput

logger = logging.getLogger(__name__)
NO_WEIGHT_DECAY = ["bias", "gamma", "beta", "scale"]  # norms and biases (BERT practice)


def make_strategy(name: str = "default") -> tf.distribute.Strategy:
    """`default`, `mirrored` (all local GPUs, else CPU), `multi_worker` (TF_CONFIG), `tpu`."""
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
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
    >>> float(schedule(100))
    0.001
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


@keras.saving.register_keras_serializable(package="tfllm")
class AdamW(keras.optimizers.AdamW):
    """`keras.optimizers.AdamW` (same arguments, slots and updates) on TensorFlow's fused
    Adam kernel.

    Keras writes the Adam update as about 15 small ops per variable; `ResourceApplyAdam`
    computes the same update (`lr * sqrt(1 - b2^t) / (1 - b1^t) * m / (sqrt(v) + eps)`)
    in one. `amsgrad` uses Keras's update. Weight decay stays Keras's.
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
class LayerwiseLamb(LayerwiseLearningRates, keras.optimizers.Lamb):
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
        optimizer_class = {"adamw": AdamW, "lamb": keras.optimizers.Lamb}
    optimizer = optimizer_class[config.optimizer](**kwargs)
    optimizer.exclude_from_weight_decay(var_names=NO_WEIGHT_DECAY)
    return optimizer


class Trainer:
    """Trains a compiled Keras model on a `tf.data` pipeline under a strategy.

    Writes into `run_dir`: `checkpoints/` (weights, optimizer and dropout's random state,
    and in `checkpoints/input-<worker>/` each worker's input position, every
    `checkpoint_every` steps and at the end) and `logs/` (TensorBoard scalars: loss,
    metrics, learning rate, tokens/s, MFU). Restarting with the same `run_dir` resumes.

    Args:
        model: a model built and compiled under `strategy.scope()`.
        strategy: the `tf.distribute.Strategy` it was built under.
        run_dir: output folder of the run.
        steps: total optimizer steps (batches) of the run.
        checkpoint_every, log_every: intervals in steps.
        tokens_per_batch: tokens in one global batch, for tokens/s.
        flops_per_token: training FLOPs per token; with `peak_flops` gives MFU.
        peak_flops: the machine's FLOP/s, e.g. a measured `tf.matmul` rate.
        verbose: show progress (`tfllm.progress`).
    """

    def __init__(
        self,
        model: keras.Model,
        strategy: tf.distribute.Strategy,
        run_dir,
        steps: int,
        checkpoint_every: int = 200,
        log_every: int = 20,
        tokens_per_batch: int = 0,
        flops_per_token: float = 0.0,
        peak_flops: float = 0.0,
        verbose: bool = True,
    ):
        if model.optimizer is None:
            raise ValueError("`model` must be compiled (with an optimizer) before training.")
        self.model = model
        self.strategy = strategy
        self.run_dir = Path(run_dir)
        self.steps = steps
        self.checkpoint_every = checkpoint_every
        self.log_every = log_every
        self.tokens_per_batch = tokens_per_batch
        self.flops_per_token = flops_per_token
        self.peak_flops = peak_flops
        self.verbose = verbose
        resolver = getattr(strategy, "cluster_resolver", None)
        self.worker = None if resolver is None else resolver.task_id
        self.is_chief = (
            resolver is None
            or resolver.task_type == "chief"
            or (resolver.task_type == "worker" and resolver.task_id == 0)
        )
        # Traced once per input (`ReplicaInput`): once per `fit` for training, once for validation.
        self._train_function = tf.function(self._train_steps)
        self._test_function = tf.function(self._test_steps)

    def fit(
        self,
        dataset,
        validation_data=None,
        validation_steps: int = 20,
    ) -> dict[str, list[float]]:
        """Trains until `steps`; returns the logged history `{name: [values]}`.

        Args:
            dataset: a `tf.data.Dataset` of global batches `(x, y[, sample_weight])`, or a
                function `InputContext -> Dataset` of per-replica batches (each input
                pipeline reading its own shard, as multi-worker training needs; see
                `ReplicaInput`). It must not run out (`.repeat()` it) and must be
                deterministic. Its iterator is checkpointed with the weights where
                `tf.data` can save it (its external state policy allows it); else a
                resumed run reads and drops the batches already trained on.
            validation_data: the same kinds, evaluated every `log_every` steps on the
                same first `validation_steps` batches, read once and cached in memory
                (shuffle it not; a masked LM's masks are drawn once).
            validation_steps: batches per evaluation.
        """
        latest = tf.train.latest_checkpoint(str(self.run_dir / "checkpoints"))
        # Dropout's random state: Keras keeps it in variables that the model does not track
        # for `tf.train.Checkpoint`; without it a resumed run draws other masks. Runs whose
        # checkpoints lack it (written before it was saved) go on without it.
        seeds = [v.value for v in self.model.variables if v.name == "seed_generator_state"]
        saved = [name for name, _ in tf.train.list_variables(latest)] if latest else []
        if latest and not any(name.startswith("seeds/") for name in saved):
            seeds = []
        checkpoint = tf.train.Checkpoint(
            model=self.model, optimizer=self.model.optimizer, seeds=seeds
        )
        manager = tf.train.CheckpointManager(checkpoint, str(self._checkpoint_dir()), max_to_keep=2)
        self._build(dataset)
        if latest:  # resume: weights and optimizer step, then the data position
            checkpoint.restore(latest).assert_existing_objects_matched()
        step = int(self.model.optimizer.iterations.numpy())
        inputs = ReplicaInput(self.strategy, dataset)
        iterator, input_manager = self._input_at(inputs, step)
        validation = None
        if validation_data is not None:
            validation = ReplicaInput(self.strategy, validation_data).first(validation_steps)
        writer = (
            tf.summary.create_file_writer(str(self.run_dir / "logs"))
            if self.is_chief
            else tf.summary.create_noop_writer()
        )
        history: dict[str, list[float]] = {"step": []}
        progress = StepProgress(self.steps, step, verbose=self.verbose and self.is_chief)
        started, started_step = time.perf_counter(), step
        while step < self.steps:
            # One graph call runs the steps up to the next log or checkpoint step: the host
            # reads the metrics there only.
            stop = min(self._next(step, self.log_every), self._next(step, self.checkpoint_every))
            done, logs = self._train_function(inputs, iterator, tf.constant(stop - step))
            step += int(done)
            loss = float(logs["loss"])
            if not math.isfinite(loss):
                raise FloatingPointError(
                    f"The training loss became {loss} at step {step}: stopping. "
                    "Lower the learning rate, enable clipping, or check the data."
                )
            if step % self.log_every == 0 or step == self.steps:
                logs = {k: float(v) for k, v in logs.items()}
                logs.update(self._speed(step - started_step, time.perf_counter() - started))
                logs["learning_rate"] = float(
                    keras.ops.convert_to_numpy(self.model.optimizer.learning_rate)
                )
                self.model.reset_metrics()
                if validation is not None:
                    logs.update(self._evaluate(validation, prefix="val_"))
                self._record(writer, history, step, logs)
                progress.update(step, logs)
                started, started_step = time.perf_counter(), step
            if step % self.checkpoint_every == 0 or step == self.steps:
                self._save(manager, input_manager, step)
        writer.flush()
        return history

    def evaluate(self, dataset, steps: int = 20, prefix: str = "") -> dict:
        """Compiled loss and metrics over the first `steps` batches of `dataset`."""
        return self._evaluate(ReplicaInput(self.strategy, dataset).first(steps), prefix)

    def _next(self, step: int, every: int) -> int:
        """The first multiple of `every` after `step`, at most `steps`."""
        return min((step // every + 1) * every, self.steps)

    def _input_at(self, inputs: ReplicaInput, step: int):
        """An iterator over `inputs` at `step`, and the manager that checkpoints it.

        The position comes from this worker's input checkpoint of `step`. Without one
        (the run was killed between the two saves, or the pipeline cannot be saved, e.g.
        Python generators or a tf.data service), the first `step` steps are read and
        dropped; the manager is `None` when the pipeline cannot be saved.
        """
        iterator = iter(inputs.dataset)
        saver = tf.train.Checkpoint(data=iterator)
        try:  # `tf.data` says whether it can save this pipeline only when asked to
            with tempfile.TemporaryDirectory() as temp:
                saver.write(os.path.join(temp, "probe"))
        except (tf.errors.FailedPreconditionError, tf.errors.UnimplementedError) as error:
            logger.warning(
                "The input position cannot be checkpointed (%s): a resumed run reads and "
                "drops the batches before its step.",
                error.message.splitlines()[0],
            )
            return iter(inputs.skip(step).dataset), None
        directory = self.run_dir / "checkpoints" / f"input-{inputs.pipeline}"
        path = str(directory / f"ckpt-{step}")
        if step and tf.io.gfile.exists(path + ".index"):
            saver.restore(path).assert_consumed()
        elif step:
            iterator = iter(inputs.skip(step).dataset)
            saver = tf.train.Checkpoint(data=iterator)
        return iterator, tf.train.CheckpointManager(saver, str(directory), max_to_keep=2)

    def _evaluate(self, validation: ReplicaInput, prefix: str) -> dict:
        self.model.reset_metrics()
        logs = self._test_function(validation, iter(validation.dataset))
        self.model.reset_metrics()
        return {prefix + k: float(v) for k, v in logs.items()}

    def _build(self, dataset):
        """Creates optimizer, loss and metric variables once, on a batch of zeros.

        Zeros of the dataset's element spec, not a batch read from it: reading would draw
        from the preprocessors' random generators (masks) before training starts.
        """
        if not isinstance(dataset, tf.data.Dataset):
            dataset = dataset(tf.distribute.InputContext())
        specs = tf.nest.flatten(dataset.element_spec)
        # One batch size for every part (some parts may know it statically, others not).
        batch_size = next((s.shape[0] for s in specs if s.shape.rank and s.shape[0]), 1)

        def zeros(spec):
            shape = [size or 1 for size in spec.shape]
            return tf.zeros([batch_size, *shape[1:]] if shape else [], spec.dtype)

        batch = tf.nest.map_structure(zeros, dataset.element_spec)
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(batch)
        with self.strategy.scope():
            self.model.optimizer.build(self.model.trainable_variables)
            y_pred = self.model(x)
            self.model.compute_loss(x, y, y_pred, sample_weight)
            self.model.compute_metrics(x, y, y_pred, sample_weight)
            self.model.reset_metrics()

    def _train_steps(self, inputs: ReplicaInput, iterator, count):
        """Runs up to `count` train steps (Keras's `train_step` on every replica) in one
        graph; stops after a step whose loss is not finite. Traced once per `fit`.

        Returns:
            the number of steps run and the metrics after the last one.
        """
        strategy = self.strategy
        done, finite = tf.constant(0), tf.constant(True)
        while finite and done < count:
            logs = strategy.run(self.model.train_step, args=(inputs.next(iterator),))
            # Reduced over all replicas, so that every worker stops at the same step.
            finite = tf.math.is_finite(strategy.reduce("MEAN", logs["loss"], axis=None))
            done += 1
        return done, self._metrics()

    def _test_steps(self, inputs: ReplicaInput, iterator):
        """Keras's `test_step` on every step of `iterator`; returns the metrics.

        Reads to the end, so that a cached input is complete after the first pass.
        """
        elements = inputs.next_optionals(iterator)
        while tf.reduce_all([element.has_value() for element in elements]):
            batch = inputs.distribute([element.get_value() for element in elements])
            self.strategy.run(self.model.test_step, args=(batch,))
            elements = inputs.next_optionals(iterator)
        return self._metrics()

    def _metrics(self):
        """The metrics as `train_step` / `test_step` return them, averaged over replicas
        (each one reports its own running values)."""
        logs = self.strategy.run(self.model.get_metrics_result)
        return {k: self.strategy.reduce("MEAN", v, axis=None) for k, v in logs.items()}

    def _speed(self, steps: int, seconds: float) -> dict:
        if not self.tokens_per_batch or seconds <= 0:
            return {}
        tokens_per_second = steps * self.tokens_per_batch / seconds
        logs = {"tokens_per_second": tokens_per_second}
        if self.flops_per_token and self.peak_flops:
            logs["mfu"] = tokens_per_second * self.flops_per_token / self.peak_flops
        return logs

    def _record(self, writer, history, step, logs):
        history["step"].append(step)
        with writer.as_default(step=step):
            for key, value in logs.items():
                history.setdefault(key, []).append(value)
                tf.summary.scalar(key, value)

    def _checkpoint_dir(self) -> Path:
        if self.is_chief:
            return self.run_dir / "checkpoints"
        # Every worker must write (variables are mirrored); only the chief's copy is kept.
        return self.run_dir / "checkpoints" / f".worker-{self.worker}"

    def _save(self, manager, input_manager, step):
        # The input position first: a model checkpoint always has its input checkpoint.
        if input_manager is not None:
            input_manager.save(checkpoint_number=step)
        manager.save(checkpoint_number=step)
        if not self.is_chief:
            tf.io.gfile.rmtree(str(self._checkpoint_dir()))
