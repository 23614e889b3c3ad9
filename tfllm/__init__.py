"""tfllm: language models from raw text to served SavedModels, on Keras 3 + TensorFlow.

Importing tfllm selects the TensorFlow backend for Keras (unless `KERAS_BACKEND` is already
set, in which case it must say `tensorflow`).
"""

import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import keras  # noqa: E402

if keras.backend.backend() != "tensorflow":
    raise ImportError(
        "tfllm needs the Keras TensorFlow backend. "
        f"Received: KERAS_BACKEND={keras.backend.backend()!r}"
    )

from tfllm import (  # noqa: E402
    assets,
    generation,
    layers,
    losses,
    metrics,
    models,
    preprocessing,
    tokenizers,
)

__version__ = "0.1.0"
__all__ = [
    "assets",
    "generation",
    "layers",
    "losses",
    "metrics",
    "models",
    "preprocessing",
    "tokenizers",
    "__version__",
]
