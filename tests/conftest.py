"""Session setup shared by all tests: Keras backend, two logical CPUs, asset cache, seeds."""

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
