"""Training loop: schedule, optimizer, resume after a kill, Mirrored and multi-worker runs."""

import collections
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

from tests import train_tiny
from tests.workers import run_workers
from tfllm.config import RunConfig
from tfllm.trainer import Trainer
from tfllm.training import (
    AdamW,
    WarmupDecay,
    check_tf_config,
    make_optimizer,
    make_strategy,
)

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = str(ROOT / "tests" / "train_tiny.py")


def _env(**extra):
    env = dict(os.environ, PYTHONPATH=str(ROOT), TF_CPP_MIN_LOG_LEVEL="3", **extra)
    env.pop("TF_CONFIG", None)
    env.update(extra)
    return env


def _weights(path):
    with np.load(path) as data:
        return [data[k] for k in sorted(data, key=lambda k: int(k.split("_")[1]))]


def _max_diff(a, b):
    return max(float(np.abs(x - y).max()) for x, y in zip(a, b, strict=True))


@pytest.mark.parametrize(
    "schedule, step, expected",
    [
        ("cosine", 0, 1e-3 * 1 / 10),  # warmup: (step + 1) / warmup_steps
        ("cosine", 9, 1e-3),
        ("cosine", 10, 1e-3),
        ("cosine", 55, 1e-3 * 0.5),  # halfway through the decay
        ("cosine", 100, 0.0),
        ("linear", 55, 1e-3 * 0.5),
        ("linear", 100, 0.0),
        ("constant", 80, 1e-3),
    ],
)
def test_warmup_decay_known_values(schedule, step, expected):
    rate = WarmupDecay(1e-3, warmup_steps=10, total_steps=100, schedule=schedule)
    assert float(rate(step)) == pytest.approx(expected, abs=1e-9)


def test_warmup_decay_end_ratio_and_config_round_trip():
    rate = WarmupDecay(1e-3, 0, 100, "cosine", end_ratio=0.1)
    assert float(rate(100)) == pytest.approx(1e-4)
    again = WarmupDecay.from_config(rate.get_config())
    assert float(again(37)) == pytest.approx(float(rate(37)))


def _adamw_trajectory(optimizer_class, strategy, **kwargs):
    """Weights of a two-layer model after 4 `fit` steps of `optimizer_class`."""
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(8, 3)), rng.normal(size=(8, 2))
    with strategy.scope():
        model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(4, "tanh"),
                                  keras.layers.Dense(2)])  # fmt: skip
        model.set_weights([rng.normal(size=w.shape) for w in model.get_weights()])
        optimizer = optimizer_class(learning_rate=0.1, weight_decay=0.1, **kwargs)
        optimizer.exclude_from_weight_decay(var_names=["bias"])
        model.compile(optimizer, "mse")
    model.fit(x, y, batch_size=4, epochs=2, shuffle=False, verbose=0)
    return model.get_weights()


@pytest.mark.parametrize("amsgrad", [False, True])
@pytest.mark.parametrize("mirrored", [False, True], ids=["default", "mirrored"])
def test_fused_adamw_equals_keras_adamw(amsgrad, mirrored):
    strategy = tf.distribute.get_strategy()
    if mirrored:  # without collective ops, which later collective tests in this process trip on
        strategy = tf.distribute.MirroredStrategy(
            ["/cpu:0", "/cpu:1"], cross_device_ops=tf.distribute.ReductionToOneDevice()
        )
    got = _adamw_trajectory(AdamW, strategy, amsgrad=amsgrad)
    want = _adamw_trajectory(keras.optimizers.AdamW, strategy, amsgrad=amsgrad)
    for a, b in zip(got, want, strict=True):  # float rounding of 4 steps of size ~0.1
        np.testing.assert_allclose(a, b, atol=1e-5)
    assert AdamW.from_config(AdamW(0.1, amsgrad=amsgrad).get_config()).amsgrad == amsgrad


def test_fused_adamw_sums_repeated_rows_of_sparse_gradients():
    """An embedding gradient (`IndexedSlices`, rows repeated) is Adam on its dense sum.

    (Keras's own Adam squares each slice before summing them into `v`.)"""
    lr, beta_1, beta_2, eps = 0.1, 0.9, 0.999, 1e-7
    table = keras.Variable(np.ones((4, 2)), name="table")
    optimizer = AdamW(lr, beta_1=beta_1, beta_2=beta_2, epsilon=eps, weight_decay=0.0)
    slices = tf.IndexedSlices(tf.constant([[1.0, 2.0], [3.0, -4.0]]), tf.constant([1, 1]), [4, 2])
    dense = np.zeros((4, 2))
    dense[1] = [4.0, -2.0]
    want, m, v = np.ones((4, 2)), np.zeros((4, 2)), np.zeros((4, 2))
    for t in (1, 2):
        optimizer.apply([slices], [table])
        m, v = beta_1 * m + (1 - beta_1) * dense, beta_2 * v + (1 - beta_2) * dense**2
        alpha = lr * np.sqrt(1 - beta_2**t) / (1 - beta_1**t)
        want -= alpha * m / (np.sqrt(v) + eps)
    np.testing.assert_allclose(np.asarray(table), want, rtol=1e-6)


def test_optimizer_decays_weights_but_not_norms_or_biases():
    config = RunConfig(optimizer="adamw", weight_decay=0.5, learning_rate=0.1, steps=10)
    optimizer = make_optimizer(config)
    kernel = keras.Variable(np.ones((2, 2), "float32"), name="kernel")
    bias = keras.Variable(np.ones((2,), "float32"), name="bias")
    gamma = keras.Variable(np.ones((2,), "float32"), name="gamma")
    optimizer.apply(
        [np.zeros((2, 2), "float32"), np.zeros(2, "float32"), np.zeros(2, "float32")],
        [kernel, bias, gamma],
    )
    assert np.all(np.asarray(kernel) < 1.0)  # decayed with a zero gradient
    np.testing.assert_array_equal(np.asarray(bias), 1.0)
    np.testing.assert_array_equal(np.asarray(gamma), 1.0)


def test_lamb_and_gradient_accumulation_settings():
    optimizer = make_optimizer(RunConfig(optimizer="lamb", gradient_accumulation_steps=4))
    assert isinstance(optimizer, keras.optimizers.Lamb)
    assert optimizer.gradient_accumulation_steps == 4
    assert optimizer.global_clipnorm == 1.0


@pytest.mark.parametrize(
    "text, match",
    [
        ("", "needs the TF_CONFIG"),
        ("{not json", "not valid JSON"),
        ('{"cluster": {}, "task": {"type": "worker", "index": 0}}', "cluster.worker"),
        ('{"cluster": {"worker": ["a:1"]}, "task": {"type": "worker", "index": 3}}', "outside"),
        ('{"cluster": {"worker": ["a:1"]}, "task": {"type": "ps", "index": 0}}', "task.type"),
    ],
)
def test_bad_tf_config_fails_early(text, match):
    with pytest.raises(ValueError, match=match):
        check_tf_config(text)


def test_unknown_strategy():
    with pytest.raises(ValueError, match="strategy"):
        make_strategy("horovod")


def test_mirrored_runs_of_models_of_other_shapes_share_a_process():
    """A second `MirroredStrategy` would number its all-reduces from the start again and
    TensorFlow would match them with the first one's: the second model fails with "Shape
    mismatch in the collective instance" (tensorflow/tensorflow#62790)."""
    for units in (3, 5):
        strategy = make_strategy("mirrored")
        assert strategy.num_replicas_in_sync == 2
        with strategy.scope():
            model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(units)])
            model.compile("sgd", "mse")
        history = model.fit(np.ones((8, 4)), np.ones((8, units)), batch_size=4, verbose=0)
        assert np.isfinite(history.history["loss"]).all()


def test_gradient_accumulation_equals_one_step_on_the_whole_batch(tmp_path):
    """Two accumulated half batches (SGD, mean loss) move the weights as one full batch."""
    x = np.random.default_rng(0).normal(size=(8, 3)).astype("float32")
    y = x @ np.array([[1.0], [-2.0], [0.5]], "float32")
    kernel = np.random.default_rng(1).normal(size=(3, 1))
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1, use_bias=False)])
    model.set_weights([kernel.astype("float32")])
    model.compile(keras.optimizers.SGD(0.1, gradient_accumulation_steps=2), "mse")
    data = tf.data.Dataset.from_tensor_slices((x, y)).batch(4).repeat()
    Trainer(model, tf.distribute.get_strategy(), tmp_path, steps=2, verbose=False).fit(data)
    # By hand in float64: d/dw mean((xw - y)^2) = 2 x^T (xw - y) / n over all 8 rows.
    expected = kernel - 0.1 * 2 * x.T.astype("float64") @ (x @ kernel - y) / 8
    np.testing.assert_allclose(model.get_weights()[0], expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("precision", ["float32", "mixed_float16"])
def test_gradient_accumulation_under_mirrored_strategy_fails_early(
    tmp_path, mirrored_strategy, precision
):
    keras.config.set_dtype_policy(precision)  # mixed_float16: a LossScaleOptimizer
    model = train_tiny.build(mirrored_strategy, 4, gradient_accumulation_steps=2)
    with pytest.raises(ValueError, match="`gradient_accumulation_steps=2` is not supported with "
                                         "MirroredStrategy"):  # fmt: skip
        Trainer(model, mirrored_strategy, tmp_path, steps=4)
    with pytest.raises(ValueError, match="with `strategy=mirrored`"):
        RunConfig(strategy="mirrored", gradient_accumulation_steps=2)


def test_trainer_logs_checkpoints_and_validation(tmp_path):
    strategy = tf.distribute.get_strategy()
    model = train_tiny.build(strategy, total_steps=6)
    trainer = Trainer(
        model,
        strategy,
        tmp_path,
        steps=6,
        checkpoint_every=3,
        log_every=3,
        tokens_per_batch=128,
        flops_per_token=1e6,
        peak_flops=1e12,
        verbose=False,
    )
    history = trainer.fit(
        train_tiny.dataset_fn, validation_data=train_tiny.dataset_fn, validation_steps=2
    )
    assert history["step"] == [3, 6]
    assert all(np.isfinite(history["loss"])) and len(history["val_loss"]) == 2
    assert history["tokens_per_second"][-1] > 0 and 0 < history["mfu"][-1] < 1
    assert history["learning_rate"][0] == pytest.approx(float(WarmupDecay(1e-3, 2, 6)(3)))
    assert tf.train.latest_checkpoint(str(tmp_path / "checkpoints")).endswith("ckpt-6")
    assert list((tmp_path / "logs").glob("events.out.tfevents.*"))


def test_non_finite_loss_stops_and_names_the_step(tmp_path):
    strategy = tf.distribute.get_strategy()
    model = train_tiny.build(strategy, total_steps=5)
    model.compile(optimizer=model.optimizer, loss=lambda y, p: tf.reduce_mean(p) * np.inf)
    trainer = Trainer(model, strategy, tmp_path, steps=5, verbose=False)
    with pytest.raises(FloatingPointError, match="at step 1"):
        trainer.fit(train_tiny.dataset_fn)


def test_mirrored_equals_single_device_with_sgd(tmp_path, mirrored_strategy):
    """Two replicas averaging their gradients take the same steps as one device."""
    results = []
    for name, strategy in (("one", tf.distribute.get_strategy()), ("two", mirrored_strategy)):
        model = train_tiny.build(strategy, total_steps=4)
        with strategy.scope():
            model.compile(
                optimizer=keras.optimizers.SGD(0.5),
                loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            )
        Trainer(model, strategy, tmp_path / name, steps=4, verbose=False).fit(
            train_tiny.dataset_fn(tf.distribute.InputContext()).rebatch(train_tiny.GLOBAL_BATCH)
        )
        results.append(model.get_weights())
    assert _max_diff(*results) < 1e-5


@pytest.mark.parametrize("optimizer", ["adamw", "lamb"])
def test_mirrored_clipping_equals_single_device(tmp_path, mirrored_strategy, optimizer):
    """Global-norm clipping clips the global batch's gradient (summed over the replicas),
    as one device does, not each replica's own: a clip far below the gradient norm (about 1
    at initialisation) bites on every step."""
    results = []
    for name, strategy in (("one", tf.distribute.get_strategy()), ("two", mirrored_strategy)):
        model = train_tiny.build(
            strategy, total_steps=2, learning_rate=1e-2, optimizer=optimizer, clipnorm=1e-3
        )
        Trainer(model, strategy, tmp_path / name, steps=2, verbose=False).fit(
            train_tiny.dataset_fn(tf.distribute.InputContext()).rebatch(train_tiny.GLOBAL_BATCH)
        )
        results.append(model.get_weights())
    assert _max_diff(*results) < 1e-5


@pytest.mark.slow
def test_killed_run_resumes_at_same_step_and_data(tmp_path):
    steps = 300
    subprocess.run(
        [sys.executable, SCRIPT, str(tmp_path / "full"), str(steps), "default", "25"],
        env=_env(),
        check=True,
        timeout=300,
    )
    run_dir = tmp_path / "killed"
    process = subprocess.Popen(
        [sys.executable, SCRIPT, str(run_dir), str(steps), "default", "25"], env=_env()
    )
    deadline = time.time() + 240
    while not (run_dir / "checkpoints" / "ckpt-50.index").exists():
        assert process.poll() is None and time.time() < deadline, "run ended before the kill"
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (run_dir / "weights-0.npz").exists()  # it really died mid-run
    subprocess.run(
        [sys.executable, SCRIPT, str(run_dir), str(steps), "default", "25"],
        env=_env(),
        check=True,
        timeout=300,
    )
    assert (
        _max_diff(
            _weights(tmp_path / "full" / "weights-0.npz"), _weights(run_dir / "weights-0.npz")
        )
        == 0.0
    )


@pytest.mark.slow
def test_two_worker_processes_end_with_identical_weights(tmp_path):
    run_workers([sys.executable, SCRIPT, str(tmp_path), "6", "multi_worker", "3"])
    first, second = (_weights(tmp_path / f"weights-{i}.npz") for i in range(2))
    assert _max_diff(first, second) == 0.0
    assert (tmp_path / "checkpoints" / "ckpt-6.index").exists()
    assert not list((tmp_path / "checkpoints").glob(".worker-*"))


def test_train_and_test_steps_are_traced_once_and_validation_read_once(tmp_path):
    strategy = tf.distribute.get_strategy()
    model = train_tiny.build(strategy, total_steps=8)
    traces = collections.Counter()
    for name in ("train_step", "test_step"):
        original = getattr(model, name)

        def counted(data, name=name, original=original):  # runs once per trace
            traces[name] += 1
            return original(data)

        setattr(model, name, counted)
    reads = tf.Variable(0)

    def validation_fn(context):
        def count(*batch):
            reads.assign_add(1)
            return batch

        return train_tiny.dataset_fn(context).map(count)

    trainer = Trainer(model, strategy, tmp_path, steps=8, checkpoint_every=3, log_every=2,
                      verbose=False)  # fmt: skip
    history = trainer.fit(train_tiny.dataset_fn, validation_data=validation_fn, validation_steps=2)
    assert history["step"] == [2, 4, 6, 8] and len(history["val_loss"]) == 4
    assert traces == {"train_step": 1, "test_step": 1}
    assert int(reads.numpy()) == 2  # the validation batches were cached after the first pass
    assert history["val_loss"][-1] == pytest.approx(trainer.evaluate(validation_fn, 2)["loss"])
    # Other inputs of a layout (here global batches) share its trace, whatever their size.
    ids = np.random.default_rng(1).integers(0, 1024, (11, train_tiny.LENGTH + 1), "int32")
    x = {"token_ids": ids[:, :-1], "padding_mask": np.ones_like(ids[:, :-1])}
    rows = tf.data.Dataset.from_tensor_slices((x, ids[:, 1:]))
    for batch_size in (4, 3):  # last batches of 3 and 2 rows
        trainer.evaluate(rows.batch(batch_size), steps=None)
    assert traces == {"train_step": 1, "test_step": 2}
    assert trainer._test_function.experimental_get_tracing_count() == 2


def _counting(reads, checkpointable=True):
    """`train_tiny.dataset_fn`, counting the batches its pipeline makes in `reads`."""

    def dataset_fn(context):
        def count(*batch):
            reads.assign_add(1)
            return batch

        options = tf.data.Options()
        options.experimental_optimization.inject_prefetch = False  # no batches read ahead
        if checkpointable:  # the counter is state outside the pipeline that may be left out
            options.experimental_external_state_policy = (
                tf.data.experimental.ExternalStatePolicy.IGNORE
            )
        return train_tiny.dataset_fn(context).map(count).with_options(options)

    return dataset_fn


def _killed_and_whole(tmp_path, strategy, dataset_fn, reads, **changes):
    """Weights after 8 steps in one go, and after 4 (a kill after that checkpoint) + 4;
    `changes` go to the optimizer's `RunConfig`."""
    weights = {}
    for name, stops in (("whole", [8]), ("resumed", [4, 8])):
        for steps in stops:
            model = train_tiny.build(strategy, total_steps=8, **changes)  # a schedule of 8
            reads.assign(0)
            trainer = Trainer(model, strategy, tmp_path / name, steps=steps, checkpoint_every=4,
                              log_every=4, verbose=False)  # fmt: skip
            trainer.fit(dataset_fn)
        weights[name] = model.get_weights()
    return weights


@pytest.mark.parametrize("distributed", [False, True], ids=["default", "mirrored"])
def test_resume_restores_the_input_position(tmp_path, mirrored_strategy, distributed):
    strategy = mirrored_strategy if distributed else tf.distribute.get_strategy()
    reads = tf.Variable(0, dtype=tf.int64)
    weights = _killed_and_whole(tmp_path, strategy, _counting(reads), reads)
    assert (tmp_path / "resumed" / "checkpoints" / "input-0" / "ckpt-4.index").exists()
    # The resumed run read its 4 steps only (a batch for each replica a step), not 8.
    assert int(reads.numpy()) == 4 * strategy.num_replicas_in_sync
    assert _max_diff(weights["whole"], weights["resumed"]) == 0.0


def test_a_run_with_gradient_accumulation_resumes_at_its_step(tmp_path):
    """The optimizer's `iterations` counts updates (every 2nd step here), not steps."""
    strategy = tf.distribute.get_strategy()
    reads = tf.Variable(0, dtype=tf.int64)
    dataset_fn = _counting(reads)
    weights = _killed_and_whole(
        tmp_path, strategy, dataset_fn, reads, gradient_accumulation_steps=2
    )
    assert int(reads.numpy()) == 4  # the resumed run's 4 steps
    assert _max_diff(weights["whole"], weights["resumed"]) == 0.0


def test_an_input_that_cannot_be_checkpointed_is_skipped_to_on_resume(tmp_path, caplog):
    strategy = tf.distribute.get_strategy()
    reads = tf.Variable(0, dtype=tf.int64)
    weights = _killed_and_whole(tmp_path, strategy, _counting(reads, False), reads)
    assert "cannot be checkpointed" in caplog.text
    assert not (tmp_path / "resumed" / "checkpoints" / "input-0").exists()
    assert int(reads.numpy()) == 8  # read again from the start
    assert _max_diff(weights["whole"], weights["resumed"]) == 0.0


def test_a_non_chief_worker_leaves_no_best_weights_behind(tmp_path):
    """Each worker keeps its own copy of the best weights while training (multi-worker
    variables are written by all); a non-chief's copy is gone once restored."""
    strategy = tf.distribute.get_strategy()
    model = train_tiny.build(strategy, total_steps=4)
    trainer = Trainer(model, strategy, tmp_path, steps=4, log_every=2, monitor="val_loss",
                      mode="min", verbose=False)  # fmt: skip
    trainer.is_chief, trainer.worker = False, 1  # as worker 1 of a cluster
    history = trainer.fit(train_tiny.dataset_fn, train_tiny.dataset_fn, validation_steps=1)
    best = trainer.best_path
    assert best.name == ".worker-1-best.weights.h5" and best.is_file()
    want = train_tiny.build(strategy, total_steps=4)
    want.optimizer.build(want.trainable_variables)  # the file holds the optimizer's too
    want.load_weights(best)
    trainer.restore_best()
    assert _max_diff(model.get_weights(), want.get_weights()) == 0.0
    assert trainer.best[1] == history["step"][int(np.argmin(history["val_loss"]))]
    assert not list((tmp_path / "checkpoints").glob(".worker-*"))


def test_a_checkpoint_without_dropout_state_still_resumes(tmp_path):
    """Checkpoints written before dropout's random state was saved resume without it."""
    strategy = tf.distribute.get_strategy()
    model = train_tiny.build(strategy, total_steps=4, dropout=0.1)
    trainer = Trainer(model, strategy, tmp_path, steps=4, checkpoint_every=2, verbose=False)
    trainer._build(train_tiny.dataset_fn)
    old = tf.train.Checkpoint(model=model, optimizer=model.optimizer)  # no `seeds`
    tf.train.CheckpointManager(old, str(tmp_path / "checkpoints"), 2).save(checkpoint_number=0)
    trainer.fit(train_tiny.dataset_fn)
    assert tf.train.latest_checkpoint(str(tmp_path / "checkpoints")).endswith("ckpt-4")
