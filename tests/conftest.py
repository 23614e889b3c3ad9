"""Session setup shared by all tests: Keras backend, two logical CPUs, asset cache, seeds."""

import contextlib
import os
from pathlib import Path

# Before anything imports TensorFlow or Keras.
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# Assets are shared between sessions (and xdist workers): keep a given cache, else the default.
os.environ.setdefault("TFLLM_CACHE", str(Path.home() / ".cache" / "tfllm"))

import tensorflow as tf  # noqa: E402

# Two logical CPUs so `MirroredStrategy(["/cpu:0", "/cpu:1"])` runs distributed code paths.
# Must happen before TensorFlow initialises its devices.
tf.config.set_logical_device_configuration(
    tf.config.list_physical_devices("CPU")[0], [tf.config.LogicalDeviceConfiguration()] * 2
)

import keras  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture
def mirrored_strategy() -> tf.distribute.MirroredStrategy:
    """A two-replica strategy on the two logical CPUs.

    Reduced on one device, not with collective all-reduce: a later MirroredStrategy in the
    same test process reuses collective instance keys, with other shapes, and aborts.
    """
    return tf.distribute.MirroredStrategy(
        ["/cpu:0", "/cpu:1"], cross_device_ops=tf.distribute.ReductionToOneDevice()
    )


@pytest.fixture(autouse=True)
def _seed_and_reset_dtype_policy():
    """Seed every test; restore float32 afterwards so a mixed-precision test cannot leak."""
    keras.utils.set_random_seed(0)
    yield
    keras.config.set_dtype_policy("float32")


@pytest.fixture(scope="module")
def toy_base(tmp_path_factory):
    """A TF Serving base path with versions 1 and 2 of `tests.toy_model` (scales 1, 2)."""
    from tests.toy_model import write_toy_model

    base = tmp_path_factory.mktemp("models") / "toy"
    base.mkdir()
    write_toy_model(str(base), 1, 1.0)
    write_toy_model(str(base), 2, 2.0)
    return base


class Killed(Exception):
    """A run stopped by `killed_after_checkpoint`."""


@pytest.fixture
def killed_after_checkpoint(monkeypatch):
    """`with killed_after_checkpoint(): run(...)`: the run dies right after writing its
    first checkpoint, as a process killed there would (and the block ends quietly)."""
    from tfllm.trainer import Trainer

    save = Trainer._save

    def save_then_die(self, *args):
        save(self, *args)
        raise Killed

    @contextlib.contextmanager
    def dying():
        with monkeypatch.context() as patch, pytest.raises(Killed):
            patch.setattr(Trainer, "_save", save_then_die)
            yield

    return dying
