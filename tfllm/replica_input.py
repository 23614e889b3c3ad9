"""Per-replica batches from a plain `tf.data` iterator, whose position can be checkpointed.

The iterators of `strategy.experimental_distribute_dataset` and
`distribute_datasets_from_function` cannot be saved with `tf.train.Checkpoint` under
`MirroredStrategy` with two replicas ("expecting a trackable object", TensorFlow 2.21).
Here each worker iterates its own input pipeline with an ordinary `tf.data` iterator and
hands every local replica its batch inside the step, with
`experimental_distribute_values_from_function`. The batches reach the devices inside the
step (no per-device prefetch): batches of token ids are small next to a step's compute.

Example:
>>> inputs = ReplicaInput(tf.distribute.get_strategy(), tf.data.Dataset.range(10).batch(2))
>>> iterator = iter(inputs.dataset)
>>> next(iterator).numpy()
array([0, 1])
>>> saved = tf.train.Checkpoint(data=iterator).save("checkpoints/input-0/ckpt")
>>> next(iterator).numpy()
array([2, 3])
>>> _ = tf.train.Checkpoint(data=iterator).restore(saved)
>>> next(iterator).numpy()  # the position after the save
array([2, 3])
"""

import copy
from typing import NamedTuple

import tensorflow as tf


class ReplicaLayout(NamedTuple):
    """How one step's elements of a worker's pipeline become per-replica batches.

    A named tuple, so that a `tf.function` taking it is traced once per layout (it traces
    a named tuple by its fields, other Python objects by identity: once per input).

    Attributes:
        strategy: the `tf.distribute.Strategy` of the run.
        first_replica: this worker's first replica (its replicas are consecutive).
        elements_per_step: elements of the pipeline one step reads (local replicas, or 1).
        global_batches: whether an element is a global batch that every replica slices
            (else each local replica takes its own element).
    """

    strategy: tf.distribute.Strategy
    first_replica: int
    elements_per_step: int
    global_batches: bool

    def next(self, iterator):
        """The per-replica batches of the next step (inside a `tf.function`)."""
        return self.distribute([next(iterator) for _ in range(self.elements_per_step)])

    def next_optionals(self, iterator) -> list:
        """The next step's elements as `tf.experimental.Optional`s (empty at the end)."""
        return [iterator.get_next_as_optional() for _ in range(self.elements_per_step)]

    def distribute(self, elements: list):
        """One step's elements -> a per-replica value for `strategy.run`."""
        replicas = self.strategy.num_replicas_in_sync

        def value(context):
            replica = context.replica_id_in_sync_group
            if not self.global_batches:
                return elements[replica - self.first_replica]
            if replicas == 1:
                return elements[0]
            return tf.nest.map_structure(lambda t: _part(t, replica, replicas), elements[0])

        return self.strategy.experimental_distribute_values_from_function(value)


class ReplicaInput:
    """This worker's input pipeline, and how one step's elements become replica batches.

    Args:
        strategy: the `tf.distribute.Strategy` of the run.
        dataset: a `tf.data.Dataset` of global batches: every worker reads all of it and
            each replica takes its slice of every batch, in replica order. Or a function
            `InputContext -> Dataset` of per-replica batches: it gives this worker's
            pipeline, and a step takes the next batch for each local replica in turn, as
            `distribute_datasets_from_function` does.

    Attributes:
        dataset: this worker's `tf.data.Dataset`.
        pipeline: this worker's input pipeline index (0 on one machine).
        layout: the `ReplicaLayout` that turns its elements into a step's replica batches.
    """

    def __init__(self, strategy: tf.distribute.Strategy, dataset):
        ids = strategy.experimental_local_results(
            strategy.experimental_distribute_values_from_function(
                lambda context: context.replica_id_in_sync_group
            )
        )
        first_replica = int(ids[0])
        replicas, local = strategy.num_replicas_in_sync, len(ids)
        self.pipeline = first_replica // local
        global_batches = isinstance(dataset, tf.data.Dataset)
        if global_batches:
            self.dataset, elements_per_step = dataset, 1
        else:
            context = tf.distribute.InputContext(replicas // local, self.pipeline, replicas)
            self.dataset, elements_per_step = dataset(context), local
        self.layout = ReplicaLayout(strategy, first_replica, elements_per_step, global_batches)

    def skip(self, steps: int) -> "ReplicaInput":
        """The same input after its first `steps` steps (read and dropped)."""
        return self._with(self.dataset.skip(steps * self.layout.elements_per_step))

    def first(self, steps: int | None) -> "ReplicaInput":
        """The first `steps` steps of the input (all of it with `None`), kept in memory
        after the first pass."""
        if steps is None:
            return self._with(self.dataset.cache())
        return self._with(self.dataset.take(steps * self.layout.elements_per_step).cache())

    def _with(self, dataset: tf.data.Dataset) -> "ReplicaInput":
        other = copy.copy(self)
        other.dataset = dataset
        return other


def _part(tensor, index: int, parts: int):
    """Rows `[index * n // parts, (index + 1) * n // parts)` of an `(n, ...)` batch."""
    size = tf.shape(tensor, out_type=tf.int64)[0]
    return tensor[index * size // parts : (index + 1) * size // parts]
