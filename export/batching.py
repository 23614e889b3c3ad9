"""Server-side batching of concurrent requests, as TF Serving's `--enable_batching`.

Example:
>>> import asyncio
>>> batch_sizes = []
>>> def double(inputs):  # the model call, in a worker thread
...     batch_sizes.append(len(inputs["x"]))
...     return {"y": inputs["x"] * 2}
>>> batcher = Batcher(double, max_batch_size=32, timeout_s=0.002, num_threads=2)
>>> async def two_requests():  # concurrent calls, as a server makes them
...     return await asyncio.gather(batcher({"x": np.ones((3, 4))}),
...                                 batcher({"x": np.ones((1, 4))}))
>>> first, second = asyncio.run(two_requests())
>>> first["y"].shape, second["y"].shape, batch_sizes  # merged into one batch of 4 rows
((3, 4), (1, 4), [4])
>>> parse_batching_parameters("max_batch_size { value: 32 } num_batch_threads { value: 4 }")
{'max_batch_size': 32, 'num_batch_threads': 4}
"""

import asyncio
import contextlib
from collections.abc import Callable

import numpy as np
from starlette.concurrency import run_in_threadpool

from export.text_proto import message_class, parse

SUPPORTED = ("max_batch_size", "batch_timeout_micros", "num_batch_threads")
UNSUPPORTED = {
    "max_enqueued_batches": "Int64Value",
    "thread_pool_name": "StringValue",
    "allowed_batch_sizes": "repeated int64",
    "pad_variable_length_inputs": "bool",
    "enable_large_batch_splitting": "BoolValue",
    "max_execution_batch_size": "Int64Value",
}


def parse_batching_parameters(text: str) -> dict[str, int]:
    """The settings a `--batching_parameters_file` (TF Serving's `BatchingParameters`
    text proto) gives, `{name: value}` of `SUPPORTED`; `ValueError` for a malformed line
    or a parameter this server does not implement."""
    fields = {**dict.fromkeys(SUPPORTED, "Int64Value"), **UNSUPPORTED}
    parameters = parse(text, message_class("BatchingParameters", fields)(), "batching parameters")
    for field, _ in parameters.ListFields():
        if field.name not in SUPPORTED:
            raise ValueError(
                f"Batching parameter `{field.name}` is not supported; use {SUPPORTED}."
            )
    return {n: getattr(parameters, n).value for n in SUPPORTED if parameters.HasField(n)}


class Batcher:
    """Merges concurrent calls of one signature into batches, as TF Serving's batching.

    A batch runs once it has `max_batch_size` rows or its oldest request has waited
    `timeout_s`; at most `num_threads` batches run at once. Requests whose inputs differ
    in shape past the batch dimension go to different batches.
    """

    IDLE_S = 30.0  # an idle batcher ends its task, so an unloaded version can be freed

    def __init__(
        self, call: Callable[[dict], dict], max_batch_size: int, timeout_s: float, num_threads: int
    ):
        self.call, self.max_batch_size, self.timeout_s = call, max_batch_size, timeout_s
        self.num_threads = num_threads
        self._queue: list = []  # (inputs, rows, key, arrival time, future)
        self._task = None

    async def __call__(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        loop = asyncio.get_running_loop()
        if self._task is None:
            self._wakeup, self._slots = asyncio.Event(), asyncio.Semaphore(self.num_threads)
            self._task = loop.create_task(self._loop())
        key = tuple((name, a.shape[1:], a.dtype.str) for name, a in sorted(inputs.items()))
        rows = next(iter(inputs.values())).shape[0]
        future = loop.create_future()
        self._queue.append((inputs, rows, key, loop.time(), future))
        self._wakeup.set()
        return await future

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self._queue:
                self._wakeup.clear()
                try:
                    await asyncio.wait_for(self._wakeup.wait(), self.IDLE_S)
                except asyncio.TimeoutError:
                    if not self._queue:
                        self._task = None
                        return
                continue
            await self._slots.acquire()  # requests keep queueing while all threads are busy
            deadline = self._queue[0][3] + self.timeout_s
            while self._rows(self._queue[0][2]) < self.max_batch_size and loop.time() < deadline:
                self._wakeup.clear()
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._wakeup.wait(), deadline - loop.time())
            batch, rest, rows, key = [], [], 0, self._queue[0][2]
            for item in self._queue:
                fits = item[2] == key and rows + item[1] <= self.max_batch_size
                (batch if fits else rest).append(item)
                rows += item[1] if fits else 0
            self._queue[:] = rest
            loop.create_task(self._run(batch))

    def _rows(self, key) -> int:
        return sum(item[1] for item in self._queue if item[2] == key)

    async def _run(self, batch: list) -> None:
        try:
            names = batch[0][0].keys()
            merged = {n: np.concatenate([item[0][n] for item in batch]) for n in names}
            outputs = await run_in_threadpool(self.call, merged)
            total = sum(item[1] for item in batch)
            if all(v.ndim and v.shape[0] == total for v in outputs.values()):
                offsets = np.cumsum([0] + [item[1] for item in batch])
                results = [
                    {n: v[start:end] for n, v in outputs.items()}
                    for start, end in zip(offsets[:-1], offsets[1:], strict=True)
                ]
            else:  # outputs without a batch dimension cannot be split: one call each
                results = [await run_in_threadpool(self.call, item[0]) for item in batch]
            for item, result in zip(batch, results, strict=True):
                if not item[4].done():
                    item[4].set_result(result)
        except Exception as error:
            for item in batch:
                if not item[4].done():
                    item[4].set_exception(error)
        finally:
            self._slots.release()
