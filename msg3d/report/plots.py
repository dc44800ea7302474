"""`msg3d plot`: training curves, a confusion matrix and per-class accuracy, as SVG.

Three subcommands:

* ``curves``: one line per modality of each numeric column of the runs' ``epochs.csv`` (written by
  ``msg3d train``), losses in one panel and accuracies in another, against the epoch;
* ``confusion``: the row-normalised confusion matrix of one scores pickle (a stream's or a fusion's);
* ``per-class``: per-class top-1 accuracy of several scores pickles side by side.

A scores pickle is read with the ``<stem>_samples.csv`` beside it (``msg3d.scores.read_scores``).
Plots use matplotlib's Agg backend, a fixed SVG hash salt and no date, so the same inputs give
byte-identical files.
"""

import csv
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the backend)
import numpy as np  # noqa: E402

from msg3d.report import parse_named_paths  # noqa: E402
from msg3d.fileio import atomic_path  # noqa: E402
from msg3d.metrics import confusion_matrix, per_class_accuracy  # noqa: E402
from msg3d.scores import read_scores  # noqa: E402

# Fixed ids inside the SVG and no timestamp: reruns give the same bytes.
matplotlib.rcParams["svg.hashsalt"] = "msg3d"
SVG_METADATA = {"Date": None}


def class_names(num_classes):
    """NTU-style action names for 0-based labels: A001, A002, ..."""
    return [f"A{c + 1:03d}" for c in range(num_classes)]


def save_svg(fig, path):
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="svg", metadata=SVG_METADATA)
    plt.close(fig)


def read_epochs(path):
    """Read an ``epochs.csv``: ``{column: float array}`` of its numeric columns (``epoch`` required)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: epochs file not found")
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    if not rows or "epoch" not in rows[0]:
        raise ValueError(f"{path}: expected a CSV with a header holding an 'epoch' column and at least one row")
    columns = {}
    for name in rows[0]:
        values = []
        for line, row in enumerate(rows, start=2):
            text = row[name]
            try:
                values.append(float(text) if text not in ("", None) else math.nan)
            except ValueError:
                if name == "epoch":
                    raise ValueError(f"{path}: line {line}: epoch {text!r} is not a number") from None
                values = None
                break
        if values is not None:
            columns[name] = np.asarray(values)
    return columns


def _panel(name):
    """Which panel a column belongs to: 'loss', 'accuracy' or None (not plotted)."""
    lowered = name.lower()
    if "loss" in lowered:
        return "loss"
    if "top" in lowered or "acc" in lowered:
        return "accuracy"
    return None


def _style(column):
    """Line style of a column: dashed for training, solid for validation, dotted for top-5."""
    if "top5" in column:
        return ":"
    return "--" if column.startswith("train") else "-"


def plot_curves(runs, out, title=None):
    """Training curves of several runs ``{modality: epochs.csv}``: losses left, accuracies right.

    One colour per modality, one line style per column (training dashed, validation solid).
    """
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for i, modality in enumerate(sorted(runs)):
        columns = read_epochs(runs[modality])
        for name, values in columns.items():
            panel = _panel(name)
            if panel is None or np.all(np.isnan(values)):
                continue
            ax = axes[0] if panel == "loss" else axes[1]
            ax.plot(columns["epoch"], values, _style(name), color=f"C{i}", marker="o", markersize=3,
                    label=f"{modality} {name}")
    for ax, ylabel in zip(axes, ("loss", "accuracy")):
        ax.set_xlabel("epoch")
        ax.set_ylabel(ylabel)
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=6, ncol=2)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    save_svg(fig, out)


def plot_confusion(scores_path, out, title=None):
    """Row-normalised confusion matrix (true class x predicted class) of one scores pickle."""
    probs, _, labels = read_scores(scores_path)
    k = probs.shape[1]
    cm = confusion_matrix(np.argmax(probs, axis=1), labels, k)
    rows = cm.sum(axis=1, keepdims=True)
    norm = np.divide(cm, rows, out=np.zeros(cm.shape), where=rows > 0)
    size = min(4 + 0.3 * k, 20)
    fig, ax = plt.subplots(figsize=(size, size * 0.85))
    image = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    names = class_names(k)
    step = max(1, k // 30)  # label every class when they fit, else every step-th
    ax.set_xticks(range(0, k, step), names[::step], rotation=90, fontsize=7)
    ax.set_yticks(range(0, k, step), names[::step], fontsize=7)
    if k <= 20:
        for t in range(k):
            for p in range(k):
                if cm[t, p]:
                    color = "white" if norm[t, p] > 0.5 else "black"
                    ax.text(p, t, str(cm[t, p]), ha="center", va="center", fontsize=8, color=color)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="fraction of the true class")
    ax.set_title(title or f"confusion matrix ({len(labels)} samples)")
    fig.tight_layout()
    save_svg(fig, out)


def plot_per_class(scores, out, title=None):
    """Per-class top-1 accuracy of several scores pickles ``{name: path}``, as grouped bars."""
    accuracy = {}
    for name, path in scores.items():
        probs, _, labels = read_scores(path)
        accuracy[name] = per_class_accuracy(probs, labels)[2]
    sizes = {len(a) for a in accuracy.values()}
    if len(sizes) != 1:
        raise ValueError(f"the scores have different numbers of classes: {sorted(sizes)}")
    k = sizes.pop()
    present = [c for c in range(k) if any(not np.isnan(a[c]) for a in accuracy.values())]
    width = 0.8 / len(accuracy)
    fig, ax = plt.subplots(figsize=(min(4 + 0.25 * len(present) * len(accuracy), 24), 4))
    x = np.arange(len(present))
    for i, (name, acc) in enumerate(accuracy.items()):
        ax.bar(x + (i - (len(accuracy) - 1) / 2) * width, np.nan_to_num(acc[present]) * 100, width, label=name)
    names = class_names(k)
    ax.set_xticks(x, [names[c] for c in present], rotation=90 if len(present) > 12 else 0, fontsize=7)
    ax.set_ylim(0, 105)
    ax.set_ylabel("top-1 accuracy (%)")
    ax.set_xlabel("class (classes without val samples omitted)")
    ax.legend(fontsize=7, ncol=min(len(accuracy), 6))
    ax.grid(axis="y", alpha=0.3)
    if title:
        ax.set_title(title)
    fig.tight_layout()
    save_svg(fig, out)


def add_arguments(parser):
    sub = parser.add_subparsers(dest="kind", required=True, metavar="{curves,confusion,per-class}")
    curves = sub.add_parser("curves", help="training curves from the runs' epochs.csv")
    curves.add_argument("--runs", nargs="+", required=True, metavar="MODALITY=EPOCHS.csv")
    confusion = sub.add_parser("confusion", help="confusion matrix of one scores pickle")
    confusion.add_argument("--scores", required=True, type=Path, metavar="SCORES.pkl",
                           help="scores pickle with its <stem>_samples.csv beside it")
    per_class = sub.add_parser("per-class", help="per-class accuracy of several scores pickles")
    per_class.add_argument("--scores", nargs="+", required=True, metavar="NAME=SCORES.pkl")
    for p in (curves, confusion, per_class):
        p.add_argument("--title", help="figure title")
        p.add_argument("--out", required=True, type=Path, help="SVG file to write")


def run(args):
    import sys

    if args.kind == "curves":
        plot_curves(parse_named_paths(args.runs, "--runs"), args.out, args.title)
    elif args.kind == "confusion":
        plot_confusion(args.scores, args.out, args.title)
    else:
        plot_per_class(parse_named_paths(args.scores, "--scores"), args.out, args.title)
    print(f"wrote {args.out}", file=sys.stderr)
    return 0
