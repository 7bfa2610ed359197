"""Matplotlib figures for the notebooks; each helper returns a ``Figure`` and draws nothing else."""
from __future__ import annotations

import math

from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Polygon, Rectangle

from ..vision import faces
from . import metrics


def _figure(width: float, height: float) -> Figure:
    import matplotlib.pyplot as plt  # pyplot, so that Jupyter shows the figure at the end of the cell

    return plt.figure(figsize=(width, height), layout="constrained")


def save(fig: Figure, folder, name: str) -> Path:
    """Write ``fig`` as ``folder/name.png`` (folder created); returns the path."""
    path = Path(folder) / f"{name}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    return path


def _grid(n: int, ncols: int, size: float):
    ncols = max(1, min(ncols, n))
    nrows = max(1, math.ceil(n / ncols))
    fig = _figure(size * ncols, size * nrows + 0.3)
    axes = np.atleast_1d(fig.subplots(nrows, ncols)).ravel()
    for ax in axes:
        ax.axis("off")
    return fig, axes


def face_grid(images, titles=None, ncols: int = 8, size: float = 1.4, title: str | None = None) -> Figure:
    """Images (arrays or PIL, grey or colour) in a grid, with an optional title under each."""
    images = list(images)
    fig, axes = _grid(len(images), ncols, size)
    for i, image in enumerate(images):
        array = np.asarray(image)
        axes[i].imshow(array, cmap="gray" if array.ndim == 2 else None, vmin=0, vmax=255)
        if titles is not None:
            axes[i].set_title(titles[i], fontsize=8)
    if title:
        fig.suptitle(title)
    return fig


def class_balance(balance: dict[str, dict[str, dict[str, int]]]) -> Figure:
    """Stacked bars of smiling / not smiling per dataset and split (``explore.class_balance`` per dataset)."""
    fig = _figure(4 * len(balance), 3)
    axes = np.atleast_1d(fig.subplots(1, len(balance)))
    for ax, (dataset, per_split) in zip(axes, balance.items()):
        splits = list(per_split)
        smiling = np.array([per_split[s]["smiling"] for s in splits])
        not_smiling = np.array([per_split[s]["not_smiling"] for s in splits])
        ax.bar(splits, not_smiling, label="not smiling", color="tab:gray")
        ax.bar(splits, smiling, bottom=not_smiling, label="smiling", color="tab:orange")
        for x, (a, b) in enumerate(zip(smiling, not_smiling)):
            ax.text(x, a + b, f"{a / max(1, a + b):.0%} smiling", ha="center", va="bottom", fontsize=8)
        ax.set_title(dataset)
        ax.set_ylabel("images")
    axes[0].legend(loc="upper right", fontsize=8)
    return fig


def boxes_on_photos(detections, ncols: int = 4, size: float = 2.5) -> Figure:
    """Photos with their detected face boxes (green), landmarks (red) and the aligned model crop cut from each
    (dashed yellow)."""
    fig, axes = _grid(len(detections), ncols, size)
    for ax, (image, boxes) in zip(axes, detections):
        ax.imshow(np.asarray(image))
        for b in boxes:
            ax.add_patch(Rectangle((b.x, b.y), b.w, b.h, fill=False, edgecolor="lime", linewidth=2))
            ax.plot(*b.points().T, "r.", markersize=4)
            ax.add_patch(Polygon(faces.crop_corners(b), closed=True, fill=False, edgecolor="yellow", linewidth=1.5, linestyle="--"))
        ax.set_title(f"{len(boxes)} face(s)", fontsize=8)
    return fig


def training_curves(history: list[dict]) -> Figure:
    """Loss and accuracy per epoch from ``train``'s report history (train and each validation set)."""
    fig = _figure(9, 3.2)
    loss_ax, acc_ax = fig.subplots(1, 2)
    epochs = [h["epoch"] for h in history]
    loss_ax.plot(epochs, [h["train_loss"] for h in history], marker="o", label="train loss")
    loss_ax.set_xlabel("epoch")
    loss_ax.set_title("loss")
    acc_ax.plot(epochs, [h["train_accuracy"] for h in history], marker="o", label="train (augmented)")
    for name in history[0]["val"] if history else []:
        acc_ax.plot(epochs, [h["val"][name]["accuracy"] for h in history], marker="o", label=f"val {name}")
    acc_ax.set_xlabel("epoch")
    acc_ax.set_title("accuracy")
    for ax in (loss_ax, acc_ax):
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    return fig


def roc_curves(curves: dict[str, tuple]) -> Figure:
    """ROC curves from {label: (labels, probabilities)}, AUC in the legend."""
    fig = _figure(4.5, 4.2)
    ax = fig.subplots()
    for label, (y, p) in curves.items():
        fpr, tpr = metrics.roc_curve(y, p)
        ax.plot(fpr, tpr, label=f"{label} (AUC {metrics.roc_auc(y, p):.3f})")
    ax.plot([0, 1], [0, 1], ls="--", color="gray", lw=1)
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.legend(fontsize=8, loc="lower right")
    return fig


def confusion(matrices: dict[str, np.ndarray]) -> Figure:
    """2x2 confusion matrices (rows true, columns predicted), one panel per title."""
    fig = _figure(3.2 * len(matrices), 3)
    axes = np.atleast_1d(fig.subplots(1, len(matrices)))
    names = ("not smiling", "smiling")
    for ax, (title, matrix) in zip(axes, matrices.items()):
        matrix = np.asarray(matrix)
        ax.imshow(matrix, cmap="Blues")
        for (i, j), v in np.ndenumerate(matrix):
            ax.text(j, i, str(int(v)), ha="center", va="center", color="black" if v < matrix.max() / 2 else "white")
        ax.set_xticks([0, 1], names)
        ax.set_yticks([0, 1], names)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_title(title)
    return fig


def reliability(diagrams: dict[str, dict]) -> Figure:
    """Reliability diagrams (``metrics.reliability``), one panel each, ECE in the title."""
    fig = _figure(3.6 * len(diagrams), 3.6)
    axes = np.atleast_1d(fig.subplots(1, len(diagrams)))
    for ax, (title, r) in zip(axes, diagrams.items()):
        edges = np.asarray(r["edges"])
        centres, width = (edges[:-1] + edges[1:]) / 2, np.diff(edges)
        filled = np.asarray(r["count"]) > 0
        ax.bar(centres[filled], np.asarray(r["accuracy"])[filled], width=width[filled], edgecolor="black", alpha=0.7, label="accuracy")
        ax.plot([0.5, 1], [0.5, 1], ls="--", color="gray", label="perfect calibration")
        ax.set_xlim(0.5, 1)
        ax.set_ylim(0, 1)
        ax.set_xlabel("confidence")
        ax.set_ylabel("fraction right")
        ax.set_title(f"{title}\nECE {r['ece']:.3f}", fontsize=9)
        ax.legend(fontsize=7, loc="upper left")
    return fig


def saliency_overlay(crops, maps, titles=None, ncols: int = 6, size: float = 1.8) -> Figure:
    """Each greyscale crop with its saliency map (0-1) laid over it in colour."""
    crops = list(crops)
    fig, axes = _grid(len(crops), ncols, size)
    for i, (crop, heat) in enumerate(zip(crops, maps)):
        axes[i].imshow(np.asarray(crop), cmap="gray", vmin=0, vmax=255)
        axes[i].imshow(np.asarray(heat), cmap="inferno", alpha=0.5, vmin=0, vmax=1)
        if titles is not None:
            axes[i].set_title(titles[i], fontsize=8)
    return fig


def group_accuracy(groups: dict, title: str = "accuracy per group") -> Figure:
    """Bars of accuracy per group (``metrics.per_group_accuracy``), count on each bar."""
    fig = _figure(3.5, 3)
    ax = fig.subplots()
    names = [str(g) for g in groups]
    values = [v["accuracy"] for v in groups.values()]
    bars = ax.bar(names, values, color="tab:blue")
    for bar, v in zip(bars, groups.values()):
        ax.text(bar.get_x() + bar.get_width() / 2, bar.get_height(), f"n={v['n']}", ha="center", va="bottom", fontsize=8)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("accuracy")
    ax.set_title(title)
    return fig


def agreement_over_time(points: list[dict], per_version: dict | None = None) -> Figure:
    """Rolling agreement of feedback (``retrain.agreement_over_time``) and agreement per model version."""
    fig = _figure(10 if per_version else 6, 3.2)
    axes = np.atleast_1d(fig.subplots(1, 2 if per_version else 1))
    axes[0].plot([p["n"] for p in points], [p["agreement"] for p in points], marker=".")
    axes[0].set_xlabel("feedback answers (oldest first)")
    axes[0].set_ylabel("rolling agreement")
    axes[0].set_ylim(0, 1.05)
    axes[0].grid(alpha=0.3)
    if per_version:
        names = list(per_version)
        bars = axes[1].bar(range(len(names)), [v["agreement"] for v in per_version.values()])
        axes[1].set_xticks(range(len(names)), names, rotation=20, fontsize=7)
        for bar, v in zip(bars, per_version.values()):
            axes[1].text(bar.get_x() + bar.get_width() / 2, bar.get_height(), f"n={v['count']}", ha="center", va="bottom", fontsize=8)
        axes[1].set_ylim(0, 1.05)
        axes[1].set_title("agreement per model version")
    return fig
