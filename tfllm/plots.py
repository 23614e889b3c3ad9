"""PNG plots of run histories (matplotlib, no display needed).

Figures are drawn through matplotlib's object API (`Figure` on an Agg canvas), never
pyplot, so importing or plotting leaves the process's backend and figure list alone.
"""

from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from tfllm.io import atomic_path


def new_figure(**kwargs) -> Figure:
    """A `Figure(**kwargs)` on its own Agg canvas (not registered with pyplot)."""
    figure = Figure(**kwargs)
    FigureCanvasAgg(figure)
    return figure


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
    figure = new_figure(figsize=(4 * len(names), 3.2))
    axes = figure.subplots(1, len(names), squeeze=False)
    for axis, name in zip(axes[0], names, strict=True):
        axis.plot(steps, history[name], label="train")
        if len(history.get(f"val_{name}", [])) == len(steps):
            axis.plot(steps, history[f"val_{name}"], label="validation")
            axis.legend()
        axis.set_title(name)
        axis.set_xlabel("step")
        axis.grid(alpha=0.3)
    return save_figure(figure, path)


def plot_confusion_matrix(matrix, label_names, path, title: str = "confusion matrix") -> Path:
    """Heat map of `matrix[true, predicted]` counts, each row normalised to its support."""
    matrix = np.asarray(matrix, dtype=float)
    rates = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    size = 2.5 + 0.45 * len(label_names)
    figure = new_figure(figsize=(size + 1, size))
    axis = figure.subplots()
    image = axis.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    figure.colorbar(image, ax=axis, label="fraction of the true class")
    ticks = range(len(label_names))
    axis.set_xticks(ticks, label_names, rotation=45, ha="right")
    axis.set_yticks(ticks, label_names)
    if len(label_names) <= 20:  # counts in the cells while they stay readable
        for (i, j), count in np.ndenumerate(matrix):
            color = "white" if rates[i, j] > 0.5 else "black"
            axis.text(j, i, f"{count:.0f}", ha="center", va="center", color=color, fontsize=8)
    axis.set_xlabel("predicted")
    axis.set_ylabel("true")
    axis.set_title(title)
    return save_figure(figure, path)


def plot_per_class(scores: dict[str, float], path, title: str = "F1 per class") -> Path:
    """Horizontal bars of one score per class (0-1)."""
    names = list(scores)
    figure = new_figure(figsize=(6, 1 + 0.35 * len(names)))
    axis = figure.subplots()
    axis.barh(names, [scores[n] for n in names], color="tab:blue")
    axis.set_xlim(0, 1)
    axis.invert_yaxis()
    for i, name in enumerate(names):
        axis.text(min(scores[name] + 0.01, 0.9), i, f"{scores[name]:.3f}", va="center")
    axis.set_title(title)
    axis.grid(alpha=0.3, axis="x")
    return save_figure(figure, path)


def save_figure(figure: Figure, path) -> Path:
    """Writes `figure` as a PNG atomically: `path` is either the whole file or absent."""
    figure.tight_layout()
    with atomic_path(path) as temp:
        figure.savefig(temp, dpi=100)
    return Path(path)
