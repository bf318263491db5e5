"""Figures logged with every run: init diagnostics, learning curves and the test confusion matrix.

Matplotlib with the Agg backend, so plots render on machines with no screen. A run's
figures are drawn on `matplotlib.figure.Figure` objects, without pyplot: nothing
needs pyplot's figure manager here, and the MLflow helper process that draws them
imports less (`figure`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def figure(**kwargs):
    """A new figure, not registered with pyplot (no `close` needed); `savefig` renders it with Agg.

    Example:
        >>> figure(figsize=(2, 1)).get_size_inches().tolist()
        [2.0, 1.0]
    """
    from matplotlib.figure import Figure

    return Figure(**kwargs)


def learning_curve(history: list[dict], title: str, path) -> None:
    """Loss and accuracy against optimizer steps; `history` holds dicts with a `step` key."""
    fig = figure(figsize=(10, 4))
    ax_loss, ax_acc = fig.subplots(1, 2)
    steps = [h["step"] for h in history]
    for split, style in (("train", "-o"), ("val", "-s")):
        for ax, metric in ((ax_loss, "loss"), (ax_acc, "accuracy")):
            values = [h.get(f"{split}_{metric}", np.nan) for h in history]
            ax.plot(steps, values, style, markersize=3, label=split)
    ax_loss.set(xlabel="step", ylabel="loss (softmax cross-entropy)", title="loss")
    if all(h.get("train_loss", 0) > 0 for h in history) and history:
        ax_loss.set_yscale("log")
    ax_acc.set(xlabel="step", ylabel="accuracy", title="accuracy", ylim=(0, 1))
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def confusion_counts(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> np.ndarray:
    """matrix[i, j] = how many images of class i were predicted as class j.

    Example:
        >>> confusion_counts(np.array([0, 1, 1]), np.array([0, 1, 0]), 2).tolist()
        [[1, 0], [1, 1]]
    """
    matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(matrix, (y_true, y_pred), 1)
    return matrix


def confusion_matrix(matrix: np.ndarray, title: str, path, class_names=None) -> None:
    """Plot a `confusion_counts` matrix with its counts written in the cells; axes labelled by `class_names`."""
    num_classes = len(matrix)
    fig = figure(figsize=(6, 5.5))
    ax = fig.subplots()
    image = ax.imshow(matrix, cmap="Blues")
    fig.colorbar(image, ax=ax)
    if num_classes <= 20:
        threshold = matrix.max() / 2 if matrix.size else 0
        for (i, j), count in np.ndenumerate(matrix):
            ax.text(j, i, str(count), ha="center", va="center", fontsize=7,
                    color="white" if count > threshold else "black")
    ax.set(xlabel="predicted", ylabel="true", title=title,
           xticks=range(num_classes), yticks=range(num_classes))
    if class_names and len(class_names) == num_classes and num_classes <= 50:
        ax.set_xticklabels([str(c) for c in class_names], rotation=45 if max(map(len, class_names)) > 2 else 0,
                           ha="right" if max(map(len, class_names)) > 2 else "center", fontsize=7)
        ax.set_yticklabels([str(c) for c in class_names], fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def plot_diagnostics(series: dict[str, dict], path, title: str = "activation scale at initialisation") -> None:
    """Per-layer std (log scale), one line per labelled diagnostics dict, pre-activations dashed."""
    fig = figure(figsize=(9, 4.5))
    ax = fig.subplots()
    for label, diag in series.items():
        names = [r["name"] for r in diag["layers"]]
        x = np.arange(len(names))
        act = [r["act_std"] for r in diag["layers"]]
        pre = [np.nan if r["preact_std"] is None else r["preact_std"] for r in diag["layers"]]
        (line,) = ax.plot(x, act, "-o", label=f"{label}: activation")
        ax.plot(x, pre, "--s", color=line.get_color(), alpha=0.7, label=f"{label}: pre-activation")
        ax.set_xticks(x, names, rotation=30)
    ax.set_yscale("log")
    ax.axhline(1.0, color="grey", lw=0.8)
    ax.set(ylabel="standard deviation over one batch", title=title)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def run_figures(folder: Path, name: str, history: list[dict], diag: dict) -> None:
    """The figures every run logs before its test pass: init diagnostics and, if any, the learning curve."""
    plot_diagnostics({name: diag}, folder / "init_diagnostics.png", f"{name}: activation scale at initialisation")
    if history:
        learning_curve(history, name, folder / "learning_curve.png")
