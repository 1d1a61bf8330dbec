"""Pictures people would rather look at than read: confusion matrix, training curves."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from prep.outputs import atomic_write  # noqa: E402


def plot_confusion(conf: torch.Tensor, classes: list[str], path: str, title: str = "") -> None:
    n = conf.shape[0]
    norm = conf.float() / conf.sum(1, keepdim=True).clamp(min=1).float()
    size = min(4 + n * 0.35, 30)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(norm.numpy(), cmap="Blues", vmin=0, vmax=1)
    if n <= 60:
        names = [c[:28] for c in classes[:n]]
        ax.set_xticks(range(n), names, rotation=90, fontsize=7)
        ax.set_yticks(range(n), names, fontsize=7)
        if n <= 20:
            for i in range(n):
                for j in range(n):
                    if conf[i, j]:
                        ax.text(j, i, int(conf[i, j]), ha="center", va="center", fontsize=7,
                                color="white" if norm[i, j] > 0.5 else "black")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title or "confusion matrix (rows normalised)")
    fig.tight_layout()
    _save(fig, path)


def plot_curves(rows: list[dict], path: str, title: str = "") -> None:
    """rows: the metrics.jsonl records ({"epoch", "train_loss", "val_top1", "lr", "data_wait_pct", ...})."""
    epochs = [r["epoch"] for r in rows]
    panels = [("train_loss", "loss"), ("val_top1", "val top-1 (%)"), ("lr", "learning rate"),
              ("data_wait_pct", "data wait (% of step time)")]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.4))
    for ax, (key, label) in zip(axes, panels):
        pts = [(e, r[key]) for e, r in zip(epochs, rows) if r.get(key) is not None]
        if pts:
            ax.plot(*zip(*pts), marker="o", ms=3)
        ax.set_xlabel("epoch")
        ax.set_title(label)
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    _save(fig, path)


def plot_bars(values: dict[str, float], path: str, title: str = "", ylabel: str = "top-1 (%)") -> None:
    fig, ax = plt.subplots(figsize=(1.6 + 1.4 * len(values), 3.6))
    bars = ax.bar(list(values), list(values.values()), color="tab:blue")
    for b, v in zip(bars, values.values()):
        ax.text(b.get_x() + b.get_width() / 2, v + 1, f"{v:.1f}", ha="center")
    ax.set_ylim(0, 105)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    _save(fig, path)


def _save(fig, path: str) -> None:
    """PNG through a temporary file: an interrupted plot never replaces the last good picture with a torn one."""
    try:
        with atomic_write(path, "wb") as f:
            fig.savefig(f, dpi=110, format="png")
    finally:
        plt.close(fig)
