"""Pictures people would rather look at than read: confusion matrix, training curves."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from prep.outputs import atomic_write  # noqa: E402


# Up to this many classes the matrix itself is drawn, with its class names; above it, its cells are too small to
# read and their names overlap: the figure shows per-class accuracy sorted and the most confused pairs instead.
MATRIX_MAX_CLASSES = 60
LISTED = 20  # classes and pairs named in the large-class figure


def plot_confusion(conf: torch.Tensor, classes: list[str], path: str, title: str = "") -> None:
    """The confusion matrix up to MATRIX_MAX_CLASSES classes, else `confusion_summary`'s figure (the whole matrix
    is in confusion.csv beside it)."""
    if conf.shape[0] > MATRIX_MAX_CLASSES:
        fig = confusion_summary(conf, classes, title)
    else:
        fig = _matrix_figure(conf, classes, title)
    _save(fig, path)


def _matrix_figure(conf: torch.Tensor, classes: list[str], title: str):
    n = conf.shape[0]
    norm = conf.float() / conf.sum(1, keepdim=True).clamp(min=1).float()
    size = min(4 + n * 0.35, 30)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(norm.numpy(), cmap="Blues", vmin=0, vmax=1)
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
    return fig


def most_confused(conf: torch.Tensor, k: int = LISTED) -> list[tuple[int, int, int]]:
    """The k largest off-diagonal cells as (true, predicted, videos), most videos first."""
    off = conf.clone()
    off.fill_diagonal_(0)
    counts, flat = off.flatten().topk(min(k, off.numel()))
    n = conf.shape[1]
    return [(int(i) // n, int(i) % n, int(c)) for c, i in zip(counts, flat) if c > 0]


def confusion_summary(conf: torch.Tensor, classes: list[str], title: str = ""):
    """Many classes: the accuracy of every class with videos, sorted; the LISTED least accurate classes and the
    LISTED most confused pairs (true -> predicted), with their full names."""
    support = conf.sum(1)
    present = (support > 0).nonzero().flatten()
    acc = conf.diag()[present].float() / support[present].float() * 100
    order = acc.argsort()
    name = [classes[i] if i < len(classes) else str(i) for i in range(conf.shape[0])]
    fig, (ax_all, ax_low, ax_pairs) = plt.subplots(3, 1, figsize=(12, 15),
                                                   gridspec_kw={"height_ratios": (1, 1.5, 1.5)})
    ax_all.bar(range(len(order)), acc[order].numpy(), width=1.0, color="tab:blue")
    ax_all.axhline(float(acc.mean()), color="tab:red", lw=1, label=f"mean class accuracy {float(acc.mean()):.1f}%")
    ax_all.set(xlim=(-0.5, len(order) - 0.5), ylim=(0, 100), ylabel="accuracy (%)",
               xlabel=f"{len(order)} classes with videos, least accurate first")
    ax_all.legend(loc="upper left", fontsize=8)
    low = order[:LISTED].tolist()
    _named_bars(ax_low, [float(acc[i]) for i in low],
                [f"{name[present[i]]} ({_videos(int(support[present[i]]))})" for i in low], "tab:orange")
    ax_low.set(xlabel="accuracy (%)", title=f"the {len(low)} least accurate classes")
    pairs = most_confused(conf)
    _named_bars(ax_pairs, [100 * c / int(support[t]) for t, _, c in pairs],
                [f"{name[t]} -> {name[p]} ({_videos(c)})" for t, p, c in pairs], "tab:purple")
    ax_pairs.set(xlabel="% of the true class's videos",
                 title=f"the {len(pairs)} most confused pairs: true class -> predicted class")
    fig.suptitle(title or "per-class accuracy (the whole matrix: confusion.csv)")
    fig.tight_layout()
    return fig


def _named_bars(ax, values: list[float], labels: list[str], color: str) -> None:
    """Horizontal bars on a 0-100 scale, first at the top, each with its full label written over it (tick labels
    this long would squeeze the plot)."""
    rows = range(len(values))
    ax.barh(rows, values, color=color, alpha=0.35)
    for y, label in zip(rows, labels):
        ax.text(0.5, y, label, va="center", fontsize=8)
    ax.set(xlim=(0, 100), ylim=(len(values) - 0.5, -0.5))
    ax.set_yticks([])


def _videos(count: int) -> str:
    return f"{count} video{'' if count == 1 else 's'}"


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
