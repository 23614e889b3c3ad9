"""Atomic file writes: a reader sees the old file, or the whole new one, never a part.

Every file a run, an export or a report writes goes through `atomic_write` (bytes or text
at hand) or `atomic_path` (a writer that wants a path of its own, such as `model.save`).
The new content is written to a hidden temporary name in the same folder, flushed to disk,
and renamed over the target; on failure the temporary is removed and the target is left
as it was.

Example:
    >>> import json
    >>> from pathlib import Path
    >>> atomic_write("runs/r/history.json", json.dumps({"loss": [0.7, 0.5]}))
    PosixPath('runs/r/history.json')
    >>> model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    >>> with atomic_path("runs/r/model.keras") as temp:
    ...     model.save(temp)  # to runs/r/.model.<8 hex>.tmp.keras, then renamed
    >>> sorted(path.name for path in Path("runs/r").iterdir())
    ['history.json', 'model.keras']
"""

import contextlib
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_path(path) -> Iterator[Path]:
    """A temporary path beside `path`, renamed to `path` when the block succeeds.

    The temporary keeps the suffixes of `path` (`model.save` and `savefig` read them) and has a
    unique hidden name, so concurrent writers of one file do not clash and folder scanners
    (TF Serving versions, `glob("*.json")`) skip it. The block may write a file or a folder
    there; a folder replaces `path` only if `path` is absent or an empty folder.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = "".join(path.suffixes)  # all of them: `save_weights` wants `.weights.h5`
    stem = path.name[: len(path.name) - len(suffix)]
    temp = path.with_name(f".{stem}.{uuid.uuid4().hex[:8]}.tmp{suffix}")
    try:
        yield temp
        if temp.is_file():  # Data on disk before the name points at it (power loss).
            descriptor = os.open(temp, os.O_RDONLY)
            try:
                os.fsync(descriptor)
            finally:
                os.close(descriptor)
        os.replace(temp, path)
    finally:
        if temp.is_dir() and not temp.is_symlink():
            shutil.rmtree(temp, ignore_errors=True)
        else:
            temp.unlink(missing_ok=True)


def atomic_write(path, data: bytes | str) -> Path:
    """Writes `data` (`str` as UTF-8) to `path` atomically; returns `path` as a `Path`."""
    if isinstance(data, str):
        data = data.encode("utf-8")
    if not isinstance(data, bytes | bytearray | memoryview):
        raise TypeError(f"`data` must be bytes or str. Received: {type(data).__name__}")
    with atomic_path(path) as temp, open(temp, "wb") as f:
        f.write(data)
    return Path(path)
