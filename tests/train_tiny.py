"""A tiny causal-LM training run, started as a separate process by the training tests.

Usage: python tests/train_tiny.py RUN_DIR STEPS STRATEGY [CHECKPOINT_EVERY]
Writes RUN_DIR/weights-<worker>.npz at the end (worker 0 unless TF_CONFIG says otherwise).
"""

import json
import os
import sys

import keras
import numpy as np
import tensorflow as tf

from tfllm.config import RunConfig
from tfllm.models import CausalLM, GPTBackbone
from tfllm.trainer import Trainer
from tfllm.training import make_optimizer, make_strategy

GLOBAL_BATCH, LENGTH = 8, 16


def dataset_fn(context: tf.distribute.InputContext) -> tf.data.Dataset:
    """Deterministic per-replica batches; each input pipeline reads its own shard."""
    ids = np.random.default_rng(0).integers(0, 1024, (256, LENGTH + 1)).astype("int32")
    ds = tf.data.Dataset.from_tensor_slices(ids)
    ds = ds.shard(context.num_input_pipelines, context.input_pipeline_id).repeat()
    ds = ds.batch(context.get_per_replica_batch_size(GLOBAL_BATCH), drop_remainder=True)
    return ds.map(
        lambda w: ({"token_ids": w[:, :-1], "padding_mask": tf.ones_like(w[:, :-1])}, w[:, 1:])
    )


def build(strategy, total_steps: int, dropout: float = 0.0, **changes) -> keras.Model:
    """The tiny causal LM, compiled with `make_optimizer` (`changes` go to its `RunConfig`)."""
    config = RunConfig(
        **{"steps": total_steps, "learning_rate": 1e-3, "warmup_steps": 2, **changes}
    )
    keras.utils.set_random_seed(0)
    with strategy.scope():
        model = CausalLM(GPTBackbone.from_preset("gpt_tiny", dropout=dropout))
        model.compile(
            optimizer=make_optimizer(config),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        )
    return model


def main(run_dir: str, steps: int, strategy_name: str, checkpoint_every: int = 5) -> None:
    strategy = make_strategy(strategy_name)
    model = build(strategy, steps)
    trainer = Trainer(
        model,
        strategy,
        run_dir,
        steps=steps,
        checkpoint_every=checkpoint_every,
        log_every=checkpoint_every,
        verbose=False,
    )
    trainer.fit(dataset_fn)
    worker = json.loads(os.environ.get("TF_CONFIG", '{"task": {"index": 0}}'))["task"]["index"]
    np.savez(os.path.join(run_dir, f"weights-{worker}.npz"), *model.get_weights())


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), sys.argv[3], *map(int, sys.argv[4:]))
