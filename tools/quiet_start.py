"""TensorFlow started without its C++ start-up noise, for the command-line entry points.

`tools/__init__.py` calls `start_tensorflow()` before any tool imports TensorFlow, so every
`python -m tools.<name>` begins quietly; the `tfllm` library itself never changes the
user's logging settings. It sets `TF_CPP_MIN_LOG_LEVEL=2` (C++ info and warnings off;
a value the user set wins), then imports TensorFlow and initialises its devices with the
process's standard error captured, and writes back every captured line except the
known start-up noise: absl's "before InitializeLog" notice, the CUDA stub's "Could not find
cuda drivers", the CPU feature guard and, only on a machine with no NVIDIA device node,
the failed `cuInit` probe. A GPU that is present but unusable still shows its errors.

Example:
>>> noise("I0000 00:00:1.2 4178 cudart_stub.cc:31] Could not find cuda drivers", gpu=False)
True
>>> noise("E0000 00:00:1.2 4178 cuda_platform.cc:52] failed call to cuInit: ...", gpu=True)
False
"""

import glob
import logging
import os
import sys
import tempfile

NOISE = (
    "All log messages before absl::InitializeLog() is called",
    "cudart_stub.cc",
    "cpu_feature_guard.cc",
    "To enable the following instructions:",
)
# Beam's GCP module logs this at import when the (unused) BigQuery client is absent.
PYTHON_NOISE = ("apitools not found",)


def noise(line: str, gpu: bool) -> bool:
    """Whether a captured start-up line is noise (`gpu`: an NVIDIA device node exists)."""
    if any(marker in line for marker in NOISE):
        return True
    return not gpu and "failed call to cuInit" in line


def _python_filter(record: logging.LogRecord) -> bool:
    return not any(marker in record.getMessage() for marker in PYTHON_NOISE)


def start_tensorflow() -> None:
    """Imports TensorFlow and initialises its devices, dropping the start-up noise."""
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    logging.getLogger().addFilter(_python_filter)
    if "tensorflow" in sys.modules:
        return
    gpu = bool(glob.glob("/dev/nvidia[0-9]*"))
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            import tensorflow as tf

            tf.config.list_physical_devices()  # the CUDA probe runs here, once
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
        captured.seek(0)
        lines = captured.read().decode(errors="replace").splitlines(keepends=True)
    sys.stderr.write("".join(line for line in lines if not noise(line, gpu)))
    sys.stderr.flush()
