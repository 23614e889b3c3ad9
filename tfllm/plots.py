"""PNG plots of run histories (matplotlib, no display needed)."""

import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def plot_history(history: dict[str, list[float]], path, keys: tuple[str, ...] = ()) -> Path:
    """One panel per metric (train and `val_` curves together) against `history["step"]`.

    Written atomically: `path` is either the whole PNG or absent.
    """
    steps = history["step"]
    names = keys or tuple(
        k
        for k in history
        if k != "step" and not k.startswith("val_") and len(history[k]) == len(steps)
    )
    figure, axes = plt.subplots(1, len(names), figsize=(4 * len(names), 3.2), squeeze=False)
    for axis, name in zip(axes[0], names, strict=True):
        axis.plot(steps, history[name], label="train")
        if len(history.get(f"val_{name}", [])) == len(steps):
            axis.plot(steps, history[f"val_{name}"], label="validation")
            axis.legend()
        axis.set_title(name)
        axis.set_xlabel("step")
        axis.grid(alpha=0.3)
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.stem}.tmp.png")
    figure.savefig(temp, dpi=100)
    plt.close(figure)
    os.replace(temp, path)
    return path
