"""The one training loop of tfllm: pretraining and fine-tuning, under any tf.distribute strategy.

The loop runs Keras's own `model.train_step` (compiled loss, metrics, loss scaling,
gradient accumulation and clipping of the optimizer) under `strategy.run`. It is our own
loop rather than `model.fit` because `fit` fails under `MultiWorkerMirroredStrategy` in
Keras 3 (keras-team/keras#20585) and cannot checkpoint its data iterator; here each
worker's `tf.data` iterator is saved with the weights (`ReplicaInput`), so a killed run
resumes at the same step and the same data position without rereading the data.

Example:
>>> strategy = tf.distribute.get_strategy()
>>> model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
>>> model.compile("sgd", keras.losses.SparseCategoricalCrossentropy(from_logits=True),
...               metrics=["accuracy"])
>>> x, y = np.random.default_rng(0).normal(size=(64, 4)), np.arange(64) % 2
>>> data = tf.data.Dataset.from_tensor_slices((x.astype("float32"), y)).batch(8)
>>> trainer = Trainer(model, strategy, "run", steps=10, log_every=5, monitor="val_accuracy",
...                   verbose=False)
>>> history = trainer.fit(data.repeat(), validation_data=data, validation_steps=None)
>>> history["step"], sorted(p.name for p in Path("run").iterdir())
([5, 10], ['checkpoints', 'history.json', 'logs'])
>>> trainer.best_path.name
'best.weights.h5'
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

from tfllm.io import atomic_path, atomic_write
from tfllm.progress import StepProgress
from tfllm.replica_input import ReplicaInput, ReplicaLayout

logger = logging.getLogger(__name__)


class Trainer:
    """Trains a compiled Keras model on a `tf.data` pipeline under a strategy.

    Writes into `run_dir`: `checkpoints/` (weights, optimizer and dropout's random state,
    and in `checkpoints/input-<worker>/` each worker's input position, every
    `checkpoint_every` steps and at the end; with a `monitor`, `best.weights.h5`: the
    weights of the best evaluation so far), `history.json` (the logged values) and `logs/`
    (TensorBoard scalars: loss, metrics, learning rate, tokens/s, MFU). Restarting with the
    same `run_dir` resumes: same step, same data position, same history and best score.

    Args:
        model: a model built and compiled under `strategy.scope()`. Its optimizer's
            gradient accumulation is refused under `MirroredStrategy` and
            `MultiWorkerMirroredStrategy` (Keras cannot apply it there).
        strategy: the `tf.distribute.Strategy` it was built under.
        run_dir: output folder of the run.
        steps: total optimizer steps (batches) of the run.
        checkpoint_every, log_every: intervals in steps; validation runs at every log.
        tokens_per_batch: tokens in one global batch, for tokens/s.
        flops_per_token: training FLOPs per token; with `peak_flops` gives MFU.
        peak_flops: the machine's FLOP/s, e.g. a measured `tf.matmul` rate.
        monitor: a logged value (e.g. `"val_accuracy"`) whose best evaluation's weights
            are kept in `best.weights.h5`; `None` keeps none.
        mode: `"max"` or `"min"`: which way `monitor` improves.
        patience: with a `monitor`, stop after this many evaluations without a better
            value (0: never stop early).
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
        monitor: str | None = None,
        mode: str = "max",
        patience: int = 0,
        verbose: bool = True,
    ):
        if model.optimizer is None:
            raise ValueError("`model` must be compiled (with an optimizer) before training.")
        for name, value in (("steps", steps), ("checkpoint_every", checkpoint_every)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"`{name}` must be a positive integer. Received: {value!r}")
        if not isinstance(log_every, int) or log_every < 1:
            raise ValueError(f"`log_every` must be a positive integer. Received: {log_every!r}")
        if mode not in ("max", "min"):
            raise ValueError(f"`mode` must be 'max' or 'min'. Received: {mode!r}")
        if not isinstance(patience, int) or patience < 0:
            raise ValueError(f"`patience` must be an integer >= 0. Received: {patience!r}")
        if patience and not monitor:
            raise ValueError(f"`patience` ({patience}) needs a `monitor`.")
        optimizer = getattr(model.optimizer, "inner_optimizer", model.optimizer)  # loss scaling
        accumulation = optimizer.gradient_accumulation_steps
        synchronized = (tf.distribute.MirroredStrategy, tf.distribute.MultiWorkerMirroredStrategy)
        if accumulation and isinstance(strategy, synchronized):
            # Keras applies the accumulated gradients in a `cond` whose branches update
            # mirrored variables by `merge_call`, which these strategies refuse there.
            raise ValueError(
                f"The optimizer's `gradient_accumulation_steps={accumulation}` is not supported "
                f"with {type(strategy).__name__}: accumulate no gradients and raise the "
                "batch size, or train without a distribution strategy."
            )
        self.model = model
        self.strategy = strategy
        self.run_dir = Path(run_dir)
        self.steps = steps
        self.checkpoint_every = checkpoint_every
        self.log_every = log_every
        self.tokens_per_batch = tokens_per_batch
        self.flops_per_token = flops_per_token
        self.peak_flops = peak_flops
        self.monitor, self.mode, self.patience = monitor, mode, patience
        self.verbose = verbose
        resolver = getattr(strategy, "cluster_resolver", None)
        self.worker = None if resolver is None else resolver.task_id
        self.is_chief = (
            resolver is None
            or resolver.task_type == "chief"
            or (resolver.task_type == "worker" and resolver.task_id == 0)
        )
        # The best value, its step and the evaluations since: saved with the checkpoints.
        self._best = tf.Variable([math.nan, 0.0, 0.0], dtype=tf.float64, trainable=False)
        # Traced once per input layout (`ReplicaLayout`) and element spec: training once,
        # evaluation once for all its inputs (shapes relaxed, e.g. a smaller last batch).
        self._train_function = tf.function(self._train_steps)
        self._test_function = tf.function(self._test_steps, reduce_retracing=True)

    @property
    def best_path(self) -> Path:
        """This worker's copy of the best evaluation's weights (with a `monitor`)."""
        if self.is_chief:
            return self.run_dir / "checkpoints" / "best.weights.h5"
        return self.run_dir / "checkpoints" / f".worker-{self.worker}-best.weights.h5"

    def restore_best(self) -> None:
        """Loads the best evaluation's weights (with a `monitor`) into the model; a
        non-chief worker then deletes its copy, which served only this."""
        self.model.load_weights(self.best_path)
        if not self.is_chief:
            self.best_path.unlink()

    @property
    def best(self) -> tuple[float, int] | None:
        """`(value, step)` of the best evaluation of `monitor` so far, or `None`."""
        value, step, _ = self._best.numpy()
        return None if math.isnan(value) else (float(value), int(step))

    def fit(
        self,
        dataset,
        validation_data=None,
        validation_steps: int | None = 20,
    ) -> dict[str, list[float]]:
        """Trains until `steps` (or early stopping); returns the history `{name: [values]}`.

        Args:
            dataset: a `tf.data.Dataset` of global batches `(x, y[, sample_weight])`, or a
                function `InputContext -> Dataset` of per-replica batches (each input
                pipeline reading its own shard, as multi-worker training needs; see
                `ReplicaInput`). It must not run out (`.repeat()` it) and must be
                deterministic. Its iterator is checkpointed with the weights where
                `tf.data` can save it (its external state policy allows it); else a
                resumed run reads and drops the batches already trained on.
            validation_data: the same kinds, evaluated every `log_every` steps on the
                same first `validation_steps` batches (all of them with `None`), read
                once and cached in memory (shuffle it not; a masked LM's masks are drawn
                once). Its metrics are exact over all replicas and workers.
            validation_steps: batches per evaluation, or `None` for the whole input.
        """
        if validation_steps is not None and validation_steps < 1:
            raise ValueError(
                f"`validation_steps` must be a positive integer or None. Received: "
                f"{validation_steps!r}"
            )
        if self.monitor and self.monitor.startswith("val_") and validation_data is None:
            raise ValueError(f"`monitor={self.monitor!r}` needs `validation_data`.")
        latest = tf.train.latest_checkpoint(str(self.run_dir / "checkpoints"))
        checkpoint = self._checkpoint(latest)
        manager = tf.train.CheckpointManager(checkpoint, str(self._checkpoint_dir()), max_to_keep=2)
        self._build(dataset)
        if latest:  # resume: weights and optimizer step, then the data position
            checkpoint.restore(latest).assert_existing_objects_matched()
        # A checkpoint is numbered by its step (batch); the optimizer's `iterations` counts
        # updates, fewer with gradient accumulation.
        step = (
            int(latest.rsplit("-", 1)[1])
            if latest
            else int(self.model.optimizer.iterations.numpy())
        )
        history = self._history_until(step) if latest else {"step": []}
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
        progress = StepProgress(self.steps, step, verbose=self.verbose and self.is_chief)
        started, started_step = time.perf_counter(), step
        while step < self.steps and not self._out_of_patience():
            # One graph call runs the steps up to the next log or checkpoint step: the host
            # reads the metrics there only.
            stop = min(self._next(step, self.log_every), self._next(step, self.checkpoint_every))
            done, logs = self._train_function(inputs.layout, iterator, tf.constant(stop - step))
            step += int(done)
            loss = float(logs["loss"])
            if not math.isfinite(loss):
                raise FloatingPointError(
                    f"The training loss became {loss} at step {step}: stopping. "
                    "Lower the learning rate, enable clipping, or check the data."
                )
            logged = step % self.log_every == 0 or step == self.steps
            if logged:
                logs = {k: float(v) for k, v in logs.items()}
                logs.update(self._speed(step - started_step, time.perf_counter() - started))
                logs["learning_rate"] = float(
                    keras.ops.convert_to_numpy(self.model.optimizer.learning_rate)
                )
                self.model.reset_metrics()
                if validation is not None:
                    logs.update(self._evaluate(validation, prefix="val_"))
                self._record(writer, history, step, logs)
                self._track_best(step, logs)
                progress.update(step, logs)
                started, started_step = time.perf_counter(), step
            early_stop = logged and self._out_of_patience()
            if step % self.checkpoint_every == 0 or step == self.steps or early_stop:
                self._save(manager, input_manager, step, history)
        if self._out_of_patience() and self.is_chief:
            logger.info(
                "Stopped early at step %d: %s did not improve for %d evaluations (best %.6g "
                "at step %d).",
                step,
                self.monitor,
                self.patience,
                *self.best,
            )
        writer.flush()
        return history

    def evaluate(self, dataset, steps: int | None = 20, prefix: str = "") -> dict:
        """Compiled loss and metrics over the first `steps` batches of `dataset` (all with
        `None`)."""
        return self._evaluate(ReplicaInput(self.strategy, dataset).first(steps), prefix)

    def _checkpoint(self, latest: str | None) -> tf.train.Checkpoint:
        """What a checkpoint holds; parts that an older checkpoint lacks are left out."""
        saved = [name for name, _ in tf.train.list_variables(latest)] if latest else []
        parts = dict(model=self.model, optimizer=self.model.optimizer)
        # Dropout's random state: Keras keeps it in variables that the model does not track
        # for `tf.train.Checkpoint`; without it a resumed run draws other masks.
        seeds = [v.value for v in self.model.variables if v.name == "seed_generator_state"]
        if not latest or any(name.startswith("seeds/") for name in saved):
            parts["seeds"] = seeds
        if self.monitor and (not latest or any(name.startswith("best/") for name in saved)):
            parts["best"] = self._best
        return tf.train.Checkpoint(**parts)

    def _track_best(self, step: int, logs: dict) -> None:
        """Updates the best value of `monitor` and saves its weights when it improves."""
        if not self.monitor:
            return
        if self.monitor not in logs:
            raise ValueError(
                f"`monitor={self.monitor!r}` is not among the logged values: {sorted(logs)}"
            )
        value = logs[self.monitor]
        best, best_step, waited = self._best.numpy()
        better = value > best if self.mode == "max" else value < best
        if math.isnan(best) or better:
            self._best.assign([value, step, 0.0])
            with atomic_path(self.best_path) as temp:
                self.model.save_weights(temp)
        else:
            self._best.assign([best, best_step, waited + 1])

    def _out_of_patience(self) -> bool:
        return bool(self.patience) and self._best.numpy()[2] >= self.patience

    def _history_until(self, step: int) -> dict[str, list[float]]:
        """The saved history of an interrupted run, up to its checkpoint's `step`."""
        path = self.run_dir / "history.json"
        if not path.exists():
            return {"step": []}
        saved = json.loads(path.read_text(encoding="utf-8"))
        kept = sum(1 for s in saved["step"] if s <= step)
        return {key: values[:kept] for key, values in saved.items()}

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
        logs = self._test_function(validation.layout, iter(validation.dataset))
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
            if isinstance(spec, tf.RaggedTensorSpec):
                dense = tf.zeros([batch_size, *shape[1:]], spec.dtype)
                return tf.RaggedTensor.from_tensor(dense, ragged_rank=spec.ragged_rank)
            return tf.zeros([batch_size, *shape[1:]] if shape else [], spec.dtype)

        batch = tf.nest.map_structure(zeros, dataset.element_spec)
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(batch)
        with self.strategy.scope():
            self.model.optimizer.build(self.model.trainable_variables)
            y_pred = self.model(x)
            self.model.compute_loss(x, y, y_pred, sample_weight)
            self.model.compute_metrics(x, y, y_pred, sample_weight)
            self.model.reset_metrics()

    def _train_steps(self, layout: ReplicaLayout, iterator, count):
        """Runs up to `count` train steps (Keras's `train_step` on every replica) in one
        graph; stops after a step whose loss is not finite.

        Returns:
            the number of steps run and the metrics after the last one.
        """
        strategy = self.strategy
        done, finite = tf.constant(0), tf.constant(True)
        while finite and done < count:
            logs = strategy.run(self.model.train_step, args=(layout.next(iterator),))
            # Reduced over all replicas, so that every worker stops at the same step.
            finite = tf.math.is_finite(strategy.reduce("MEAN", logs["loss"], axis=None))
            done += 1
        return done, self.model.get_metrics_result()

    def _test_steps(self, layout: ReplicaLayout, iterator):
        """Keras's `test_step` on every step of `iterator`; returns the metrics.

        Reads to the end, so that a cached input is complete after the first pass.
        """
        elements = layout.next_optionals(iterator)
        while tf.reduce_all([element.has_value() for element in elements]):
            batch = layout.distribute([element.get_value() for element in elements])
            self.strategy.run(self.model.test_step, args=(batch,))
            elements = layout.next_optionals(iterator)
        # Read in cross-replica context: metric variables are summed over all replicas
        # (Keras creates them `ON_READ` with SUM aggregation), so the values are exact.
        return self.model.get_metrics_result()

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

    def _save(self, manager, input_manager, step, history):
        # The input position and the history first: a model checkpoint always has both
        # (a history that runs ahead of the checkpoint is cut back on resume).
        if input_manager is not None:
            input_manager.save(checkpoint_number=step)
        if self.is_chief:
            atomic_write(self.run_dir / "history.json", json.dumps(history, indent=1))
        manager.save(checkpoint_number=step)
        if not self.is_chief:
            tf.io.gfile.rmtree(str(self._checkpoint_dir()))
