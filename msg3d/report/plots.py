"""`msg3d plot`: training curves, a confusion matrix and per-class accuracy, as SVG (or PNG).

Three subcommands:

* ``curves``: one line per modality of each numeric column of the runs' ``epochs.csv`` (written by
  ``msg3d train``), losses in one panel and accuracies in another, against the epoch;
* ``confusion``: the row-normalised confusion matrix of one scores pickle (a stream's or a
  fusion's), with the table of its most-confused class pairs beside it;
* ``per-class``: per-class top-1 accuracy of several scores pickles, one row per class sorted by
  the last one's accuracy.

A scores pickle is read with the ``<stem>_samples.csv`` beside it (``msg3d.scores.read_scores``).
Classes are named by ``msg3d.class_names``: the names of ``--class-names DATASET`` when given (the
NTU demo's few classes are NTU-60's first ones), else (``auto``) those of the class count (60: NTU RGB+D 60,
120: NTU RGB+D 120, 400: Kinetics-400), else the label number. Plots for many classes grow with
the class count (``ROW_INCHES``, ``CELL_INCHES`` per class) so that each class keeps its own
labelled row at a fixed font size; legends and tables sit outside the data.

The format follows the output's suffix (``.svg`` or ``.png``). Plots use matplotlib's Agg
backend, a fixed SVG hash salt and no date, so the same inputs give byte-identical files.
"""

import csv
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the backend)
import numpy as np  # noqa: E402
from matplotlib.colors import PowerNorm  # noqa: E402

from msg3d.class_names import class_names, label_text, names_for_num_classes  # noqa: E402
from msg3d.fileio import atomic_path  # noqa: E402
from msg3d.metrics import confusion_matrix, per_class_accuracy  # noqa: E402
from msg3d.report import parse_named_paths  # noqa: E402
from msg3d.scores import read_scores  # noqa: E402

# Fixed ids inside the SVG and no timestamp: reruns give the same bytes.
matplotlib.rcParams["svg.hashsalt"] = "msg3d"
METADATA = {".svg": {"Date": None}, ".png": {"Software": None}}

FONT = 7  # pt, of class labels and tables: 0.1 in high, so one class per ROW_INCHES / CELL_INCHES fits
ROW_INCHES = 0.17  # height of one class's row in the per-class plot
CELL_INCHES = 0.15  # smallest side of one confusion-matrix cell (reached from 40 classes on)
COUNTS_UP_TO = 20  # classes up to which the confusion matrix prints each cell's count
LABEL_CHARS = 40  # longer class labels are cut (NTU's keep their A-code in front, so stay unique)
CHAR_INCHES = 0.055  # mean width of one character at FONT pt (DejaVu Sans), to size the label margins
PAIRS = 20  # rows of the most-confused-pairs table, or a quarter of the classes when more


def save_figure(fig, path, tight=False):
    """Write ``fig`` to ``path`` (atomically) in the format of its suffix, ``.svg`` or ``.png``;
    ``tight``: crop (or grow) the figure to what it holds, for axes placed by estimated sizes."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in METADATA:
        plt.close(fig)
        given = repr(path.suffix) if path.suffix else "a name without a suffix"
        raise ValueError(f"{path}: plots are written as .svg or .png, not {given}")
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=suffix[1:], metadata=METADATA[suffix],
                    **({"bbox_inches": "tight", "pad_inches": 0.1} if tight else {}))
    plt.close(fig)


def class_labels(num_classes, dataset=None):
    """Axis label of each of the labels 0 ... ``num_classes - 1`` (a list of str).

    ``label_text`` with the names of ``dataset`` (``msg3d.class_names.class_names``) or, without
    one, of the class count (``names_for_num_classes``); the label number when neither is known.
    Labels longer than ``LABEL_CHARS`` are cut with an ellipsis. Raises ValueError when
    ``dataset`` has fewer names than ``num_classes``.
    """
    names = class_names(dataset) if dataset else names_for_num_classes(num_classes)
    if names is not None and len(names) < num_classes:
        raise ValueError(f"{dataset} has {len(names)} class names but the scores have {num_classes} classes")
    labels = [label_text(c, names) for c in range(num_classes)]
    return [text if len(text) <= LABEL_CHARS else text[:LABEL_CHARS - 1] + "…" for text in labels]


def _label_inches(labels):
    """Room (in) that the longest of ``labels`` takes at ``FONT`` pt."""
    return CHAR_INCHES * max((len(text) for text in labels), default=1)


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

    One colour per modality, one line style per column (training dashed, validation solid); one
    legend for both panels, right of them.
    """
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), layout="constrained")
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
    # grouped by modality in the legend: "b train_loss", "b train_top1", ..., "j ..."
    handles = sorted((line for ax in axes for line in ax.lines), key=lambda line: line.get_label())
    if handles:
        fig.legend(handles=handles, loc="outside right upper", fontsize=FONT)
    if title:
        fig.suptitle(title)
    save_figure(fig, out)


def most_confused_pairs(cm, limit=PAIRS):
    """The ``limit`` largest off-diagonal cells of the confusion matrix ``cm`` (K, K) (row: true
    class, column: predicted), as ``(true, predicted, count, fraction of the true class's samples)``
    tuples, by count, then fraction, then (true, predicted), highest first; zero cells left out.

    Ranked by count, not fraction: a class with one val sample wrong would otherwise top the
    table at 100 %.
    """
    cm = np.asarray(cm)
    support = cm.sum(axis=1)
    pairs = [
        (int(t), int(p), int(cm[t, p]), float(cm[t, p] / support[t]))
        for t, p in zip(*np.nonzero(cm)) if t != p
    ]
    pairs.sort(key=lambda pair: (-pair[2], -pair[3], pair[0], pair[1]))
    return pairs[:limit]


def _table_column_inches(columns):
    """Width (in) of each table column for its longest text (header included) at ``FONT`` pt."""
    return [CHAR_INCHES * max(len(text) for text in column) + 0.3 for column in columns]


def plot_confusion(scores_path, out, title=None, dataset=None):
    """Row-normalised confusion matrix (true class x predicted class) of one scores pickle, and the
    table of its most-confused pairs (``most_confused_pairs``: ``PAIRS`` of them, a quarter of the
    classes when that is more) right of it.

    Cells are ``CELL_INCHES`` or larger, every class is labelled (``class_labels``; ``dataset``
    names them) and class boundaries are ruled every 10 classes past ``COUNTS_UP_TO`` classes,
    where the counts are no longer printed. Colour: the fraction of the true class, on a square-root
    scale so that a 5 % confusion stays visible next to the diagonal. The axes are placed in inches
    (the matrix's side grows with the class count) and the figure is cropped to what it holds.
    """
    probs, _, labels = read_scores(scores_path)
    k = probs.shape[1]
    cm = confusion_matrix(np.argmax(probs, axis=1), labels, k)
    rows = cm.sum(axis=1, keepdims=True)
    norm = np.divide(cm, rows, out=np.zeros(cm.shape), where=rows > 0)
    names = class_labels(k, dataset)
    pairs = most_confused_pairs(cm, max(PAIRS, k // 4))
    header = ["true class", "predicted as", "samples", "% of true"]
    body = [[names[t], names[p], str(n), f"{100 * f:.0f}"] for t, p, n, f in pairs]
    columns = _table_column_inches(zip(header, *body)) if body else [3.0]

    # inches: [tick labels + axis title | matrix | gap, colour bar, its label | gap | table]
    side = max(CELL_INCHES, min(0.45, 6 / k)) * k
    margin = _label_inches(names) + 0.5
    table_left = margin + side + 1.3
    width, height = table_left + sum(columns) + 0.2, margin + side + 0.6
    fig = plt.figure(figsize=(width, height))

    def axes(left, bottom, w, h):
        return fig.add_axes((left / width, bottom / height, w / width, h / height))

    ax = axes(margin, margin, side, side)
    image = ax.imshow(norm, cmap="Blues", norm=PowerNorm(0.5, vmin=0, vmax=1))
    ax.set_xticks(range(k), names, rotation=90, fontsize=FONT)
    ax.set_yticks(range(k), names, fontsize=FONT)
    if k <= COUNTS_UP_TO:
        for t in range(k):
            for p in range(k):
                if cm[t, p]:
                    color = "white" if norm[t, p] > 0.5 else "black"
                    ax.text(p, t, str(cm[t, p]), ha="center", va="center", fontsize=FONT + 1, color=color)
    else:
        for edge in range(10, k, 10):
            ax.axhline(edge - 0.5, color="0.6", linewidth=0.4)
            ax.axvline(edge - 0.5, color="0.6", linewidth=0.4)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(title or f"confusion matrix ({len(labels)} samples)")
    fig.colorbar(image, cax=axes(margin + side + 0.15, margin, 0.15, side), label="fraction of the true class")

    table_ax = axes(table_left, margin, sum(columns), side)
    table_ax.axis("off")
    wrong = int(cm.sum() - np.trace(cm))
    table_ax.set_title(f"most confused pairs ({wrong} of {len(labels)} samples misclassified)",
                       fontsize=FONT + 2, loc="left")
    if body:
        table = table_ax.table(cellText=body, colLabels=header, colWidths=[c / sum(columns) for c in columns],
                               loc="upper left", cellLoc="left", colLoc="left", edges="horizontal")
        table.auto_set_font_size(False)
        table.set_fontsize(FONT)
        for cell in table.get_celld().values():
            cell.set_height(ROW_INCHES / side)  # one FONT-pt line with air, whatever the matrix's side
    else:
        table_ax.text(0, 1, "no sample is misclassified", va="top", fontsize=FONT + 1, transform=table_ax.transAxes)
    save_figure(fig, out, tight=True)


def plot_per_class(scores, out, title=None, dataset=None):
    """Per-class top-1 accuracy of several scores pickles ``{name: path}`` as horizontal bars.

    One row per class with val samples (``ROW_INCHES`` high, labelled by ``class_labels``;
    ``dataset`` names them), sorted by the last stream's accuracy, lowest first: its bar, the
    other streams as markers on the same row (each at its own height in it), the class's sample
    count at the right, the legend above the data.
    """
    accuracy, support = {}, None
    for name, path in scores.items():
        probs, _, labels = read_scores(path)
        support, _, accuracy[name] = per_class_accuracy(probs, labels)
    sizes = {len(a) for a in accuracy.values()}
    if len(sizes) != 1:
        raise ValueError(f"the scores have different numbers of classes: {sorted(sizes)}")
    k = sizes.pop()
    names = class_labels(k, dataset)
    last = list(accuracy)[-1]
    present = [c for c in range(k) if support[c] > 0]
    # lowest first (at the top); ties in class order, so the same scores give the same figure
    present.sort(key=lambda c: (accuracy[last][c], c))
    y = np.arange(len(present))

    label_width = _label_inches([names[c] for c in present])
    fig, ax = plt.subplots(figsize=(6.5 + label_width, max(3.0, 1.6 + ROW_INCHES * len(present))),
                           layout="constrained")
    ax.barh(y, accuracy[last][present] * 100, height=0.7, color="C0", alpha=0.75, label=last)
    markers = "osD^vPX*"
    others = [n for n in accuracy if n != last]
    for i, name in enumerate(others):
        # each stream a little lower in the row than the one before, so that equal accuracies (the
        # demo's 100 %) stay apart; unclipped, so that a marker at 0 or 100 % shows whole
        shift = 0.6 * (i / (len(others) - 1) - 0.5) if len(others) > 1 else 0.0
        ax.plot(accuracy[name][present] * 100, y + shift, linestyle="none", marker=markers[i % len(markers)],
                markersize=3.5, color=f"C{i + 1}", label=name, clip_on=False, zorder=3)
    ax.set_yticks(y, [names[c] for c in present], fontsize=FONT)
    ax.set_ylim(len(present) - 0.5, -0.5)
    ax.set_xlim(0, 100)
    ax.set_xlabel(f"top-1 accuracy (%); rows sorted by {last}, lowest first; classes without val samples left out")
    ax.grid(axis="x", alpha=0.3)
    counts = ax.twinx()
    counts.set_ylim(ax.get_ylim())
    counts.set_yticks(y, [f"n={support[c]}" for c in present], fontsize=FONT)
    ax.legend(loc="lower left", bbox_to_anchor=(0, 1.0), ncols=min(len(accuracy), 8), fontsize=FONT + 1,
              frameon=False, borderaxespad=0.2)
    fig.suptitle(title or "per-class top-1 accuracy")
    save_figure(fig, out)


def add_arguments(parser):
    sub = parser.add_subparsers(dest="kind", required=True, metavar="{curves,confusion,per-class}")
    curves = sub.add_parser("curves", help="training curves from the runs' epochs.csv")
    curves.add_argument("--runs", nargs="+", required=True, metavar="MODALITY=EPOCHS.csv")
    confusion = sub.add_parser("confusion", help="confusion matrix of one scores pickle, most-confused pairs beside it")
    confusion.add_argument("--scores", required=True, type=Path, metavar="SCORES.pkl",
                           help="scores pickle with its <stem>_samples.csv beside it")
    per_class = sub.add_parser("per-class", help="per-class accuracy of several scores pickles")
    per_class.add_argument("--scores", nargs="+", required=True, metavar="NAME=SCORES.pkl",
                           help="rows are sorted by the last one's accuracy")
    for p in (confusion, per_class):
        p.add_argument("--class-names", choices=("auto", "ntu60", "ntu120", "kinetics400"), default="auto",
                       metavar="DATASET",
                       help="name the classes after this dataset's: ntu60, ntu120, kinetics400, or auto (the "
                       "default): the dataset with as many classes, else the label number")
    for p in (curves, confusion, per_class):
        p.add_argument("--title", help="figure title")
        p.add_argument("--out", required=True, type=Path, help="file to write, .svg or .png")


def run(args):
    import sys

    if args.kind == "curves":
        plot_curves(parse_named_paths(args.runs, "--runs"), args.out, args.title)
        print(f"wrote {args.out}", file=sys.stderr)
        return 0
    dataset = None if args.class_names == "auto" else args.class_names
    if args.kind == "confusion":
        plot_confusion(args.scores, args.out, args.title, dataset)
    else:
        plot_per_class(parse_named_paths(args.scores, "--scores"), args.out, args.title, dataset)
    print(f"wrote {args.out}", file=sys.stderr)
    return 0
