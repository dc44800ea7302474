"""Plots: they are written, their content follows the inputs, reruns give the same bytes, and at
60 and 120 classes every class is named, on its own row, in a figure that grows with the classes."""

import re

import numpy as np
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg

from msg3d.class_names import class_names
from msg3d.cli import main
from msg3d.report import plots
from msg3d.report.plots import (CELL_INCHES, FONT, LABEL_CHARS, PAIRS, ROW_INCHES, class_labels, most_confused_pairs,
                                plot_confusion, plot_curves, plot_per_class, read_epochs)
from msg3d.scores import read_scores, write_scores
from test_fusion import B, J, write_stream

EPOCHS = (
    "epoch,lr,train_loss,train_top1,val_top1,val_top5,seconds,samples_per_s\n"
    "1,0.1,1.6,0.2,0.3,0.9,12.5,3.1\n"
    "2,0.05,1.1,0.5,0.6,1.0,11.9,3.3\n"
)


def test_curves_are_deterministic_and_show_losses_and_accuracies(tmp_path):
    (tmp_path / "j.csv").write_text(EPOCHS)
    (tmp_path / "b.csv").write_text(EPOCHS.replace("1.6", "1.4"))
    runs = {"j": tmp_path / "j.csv", "b": tmp_path / "b.csv"}
    plot_curves(runs, tmp_path / "a.svg", title="demo xsub")
    plot_curves(runs, tmp_path / "b.svg", title="demo xsub")
    svg = (tmp_path / "a.svg").read_text()
    assert svg == (tmp_path / "b.svg").read_text()
    assert "<dc:date>" not in svg
    # legend entries: one per stream and plotted column; timing columns and lr are left out
    for label in ("j train_loss", "b val_top1", "j val_top5"):
        assert label in svg
    assert "seconds" not in svg and "samples_per_s" not in svg


def test_read_epochs_errors(tmp_path):
    (tmp_path / "e.csv").write_text("epoch,train_loss\n1,0.5\nx,0.4\n")
    with pytest.raises(ValueError, match=r"e.csv: line 3: epoch 'x' is not a number"):
        read_epochs(tmp_path / "e.csv")
    (tmp_path / "e.csv").write_text("step,train_loss\n1,0.5\n")
    with pytest.raises(ValueError, match="'epoch' column"):
        read_epochs(tmp_path / "e.csv")


def test_confusion_and_per_class(tmp_path):
    j, b = write_stream(tmp_path, "j", J), write_stream(tmp_path, "b", B)
    plot_confusion(j, tmp_path / "c1.svg", dataset="ntu60")
    plot_confusion(j, tmp_path / "c2.svg", dataset="ntu60")
    svg = (tmp_path / "c1.svg").read_text()
    assert svg == (tmp_path / "c2.svg").read_text()
    # the demo's first NTU classes by name; matplotlib keeps each text as a comment beside its glyphs
    assert "A001 drink water" in svg and "A003 brushing teeth" in svg
    assert "most confused pairs (1 of 3 samples misclassified)" in svg
    plot_per_class({"j": j, "b": b}, tmp_path / "p.svg", title="per class")
    svg = (tmp_path / "p.svg").read_text()
    assert "per class" in svg and "top-1 accuracy (%)" in svg


def test_cli_errors(tmp_path, capsys):
    assert main(["plot", "confusion", "--scores", str(tmp_path / "none.pkl"), "--out", str(tmp_path / "x.svg")]) == 2
    assert "none.pkl: scores file not found" in capsys.readouterr().err
    assert main(["plot", "per-class", "--scores", "j", "--out", str(tmp_path / "x.svg")]) == 2
    assert "--scores expects NAME=PATH" in capsys.readouterr().err


def test_class_labels_name_the_classes():
    assert class_labels(3, "ntu60") == ["A001 drink water", "A002 eat meal/snack", "A003 brushing teeth"]
    assert class_labels(3) == ["0", "1", "2"]  # no dataset has 3 classes: the label number
    assert class_labels(400)[:2] == list(class_names("kinetics400")[:2])
    ntu120 = class_labels(120)
    assert ntu120[59] == "A060 walking apart from each other" and ntu120[60] == "A061 put on headphone"
    # the longest NTU-120 name is cut, keeping its A-code
    long = ntu120[class_names("ntu120").index("support somebody with one's hand (someone is sick, help him to walk)")]
    assert len(long) == LABEL_CHARS and long.startswith("A119 support somebody") and long.endswith("…")
    with pytest.raises(ValueError, match="ntu60 has 60 class names but the scores have 61 classes"):
        class_labels(61, "ntu60")


def test_most_confused_pairs_by_count_then_fraction():
    cm = np.array([[5, 3, 0, 0],
                   [1, 0, 0, 0],   # class 1: its one sample wrong (100 %), one sample lost
                   [0, 3, 9, 1],   # 3 lost as in row 0, but a smaller fraction of 13
                   [0, 0, 0, 0]])
    assert most_confused_pairs(cm) == [(0, 1, 3, 3 / 8), (2, 1, 3, 3 / 13), (1, 0, 1, 1.0), (2, 3, 1, 1 / 13)]
    assert most_confused_pairs(cm, 2) == [(0, 1, 3, 3 / 8), (2, 1, 3, 3 / 13)]
    assert most_confused_pairs(np.eye(3, dtype=int)) == []


def synthetic_streams(folder, k, per_class=4, seed=0):
    """Two streams over k classes: right about 70 % of the time, wrong ones mostly on the next class."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(k), per_class)
    streams = {}
    for name in ("j", "4s"):
        probs = rng.random((len(labels), k)) * 0.1
        right = rng.random(len(labels)) < 0.7
        probs[np.arange(len(labels)), np.where(right, labels, (labels + 1) % k)] += 1
        frame_dirs = [f"S{i:05d}" for i in range(len(labels))]
        streams[name] = write_scores(folder / f"{name}.pkl", probs, frame_dirs, labels).scores
    return streams, labels


@pytest.fixture
def figures(monkeypatch):
    """The figures the plot functions save, still drawable after they are written."""
    saved = []
    real = plots.save_figure

    def keep(fig, path, **kwargs):
        saved.append(fig)
        real(fig, path, **kwargs)

    monkeypatch.setattr(plots, "save_figure", keep)
    return saved


def drawn(fig):
    """Draw a saved (hence closed) figure again; its renderer, to measure what it shows."""
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return canvas.get_renderer()


def extents(texts, renderer):
    return [t.get_window_extent(renderer) for t in texts if t.get_text()]


def assert_apart(boxes, axis):
    """Consecutive text boxes along ``axis`` (0: x, 1: y) do not overlap: each label readable."""
    lo, hi = ("x0", "x1") if axis == 0 else ("y0", "y1")
    boxes = sorted(boxes, key=lambda b: getattr(b, lo))
    for a, b in zip(boxes, boxes[1:]):
        assert getattr(a, hi) <= getattr(b, lo) + 0.01, (a, b)


def svg_inches(path):
    width, height = re.search(r'width="([\d.]+)pt" height="([\d.]+)pt"', path.read_text()[:1000]).groups()
    return float(width) / 72, float(height) / 72


@pytest.mark.parametrize("k", [60, 120])
def test_per_class_plot_at_ntu_size(tmp_path, figures, k):
    """Stated size: ROW_INCHES (0.17 in) per class, at least 1.6 in for title, legend and axis;
    the names of NTU RGB+D 60/120 at FONT pt, one row each, sorted; the legend above the bars."""
    streams, labels = synthetic_streams(tmp_path, k)
    out = tmp_path / "per_class.svg"
    plot_per_class(streams, out, title=f"ntu{k}")
    (fig,) = figures
    width, height = fig.get_size_inches()
    assert height == pytest.approx(1.6 + ROW_INCHES * k) and width <= 10
    assert svg_inches(out) == pytest.approx((width, height), abs=0.02)
    ax, counts = fig.axes
    names = class_labels(k)
    shown = [t.get_text() for t in ax.get_yticklabels()]
    assert sorted(shown) == sorted(names) and shown[0].startswith("A0") and all(t.get_fontsize() == FONT
                                                                              for t in ax.get_yticklabels())
    # sorted by the last stream's accuracy (the bars), lowest first, each bar its class's
    probs, _, _ = read_scores(streams["4s"])
    right = probs.argmax(1) == labels
    bars = [patch.get_width() for patch in ax.patches]
    assert bars == sorted(bars) and bars[0] < bars[-1]
    assert bars == pytest.approx([100 * right[labels == names.index(text)].mean() for text in shown])
    assert [t.get_text() for t in counts.get_yticklabels()] == ["n=4"] * k
    renderer = drawn(fig)
    assert_apart(extents(ax.get_yticklabels(), renderer), axis=1)
    legend = ax.get_legend().get_window_extent(renderer)
    assert legend.y0 >= ax.get_window_extent(renderer).y1 - 1  # above the data, not on it
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["j", "4s"]  # the markers, then the bars


@pytest.mark.parametrize("k", [60, 120])
def test_confusion_plot_at_ntu_size(tmp_path, figures, k):
    """Stated size: a matrix of CELL_INCHES (0.15 in) per class, every class named on both axes
    without overlap, the most-confused-pairs table right of it; at most 30 x 22 in for 120 classes."""
    streams, labels = synthetic_streams(tmp_path, k)
    out = tmp_path / "confusion.svg"
    plot_confusion(streams["4s"], out, title=f"ntu{k} 4s")
    (fig,) = figures
    ax, colorbar, table_ax = fig.axes
    renderer = drawn(fig)
    matrix = ax.get_window_extent(renderer)
    assert matrix.height / fig.dpi == pytest.approx(CELL_INCHES * k)
    width, height = svg_inches(out)
    assert CELL_INCHES * k < height < width <= 30 and height <= 22
    names = class_labels(k)
    assert [t.get_text() for t in ax.get_yticklabels()] == names == [t.get_text() for t in ax.get_xticklabels()]
    assert_apart(extents(ax.get_yticklabels(), renderer), axis=1)
    assert_apart(extents(ax.get_xticklabels(), renderer), axis=0)

    (table,) = table_ax.tables
    cells = table.get_celld()
    rows = max(r for r, _ in cells) + 1
    probs, _, _ = read_scores(streams["4s"])
    cm = np.zeros((k, k), dtype=int)
    np.add.at(cm, (labels, probs.argmax(1)), 1)
    expected = most_confused_pairs(cm, max(PAIRS, k // 4))
    assert rows - 1 == len(expected) == max(PAIRS, k // 4)
    assert [cells[0, c].get_text().get_text() for c in range(4)] == ["true class", "predicted as", "samples",
                                                                     "% of true"]
    for r, (t, p, n, f) in enumerate(expected, start=1):
        assert [cells[r, c].get_text().get_text() for c in range(4)] == [names[t], names[p], str(n), f"{100 * f:.0f}"]
    # the table beside the matrix, not on it, and each column wide enough for its texts
    assert table.get_window_extent(renderer).x0 > matrix.x1
    for (r, c), cell in cells.items():
        assert cell.get_text().get_window_extent(renderer).x1 <= cell.get_window_extent(renderer).x1 + 0.5


def test_curves_legend_is_outside_the_panels(tmp_path, figures):
    for name in ("j", "b"):
        (tmp_path / f"{name}.csv").write_text(EPOCHS)
    plot_curves({"j": tmp_path / "j.csv", "b": tmp_path / "b.csv"}, tmp_path / "c.svg")
    (fig,) = figures
    renderer = drawn(fig)
    (legend,) = fig.legends
    box = legend.get_window_extent(renderer)
    assert all(not box.overlaps(ax.get_window_extent(renderer)) for ax in fig.axes)
    assert [t.get_text() for t in legend.get_texts()][:4] == ["b train_loss", "b train_top1", "b val_top1",
                                                              "b val_top5"]


def test_png_and_bad_suffixes(tmp_path, capsys):
    j = write_stream(tmp_path, "j", J)
    argv = ["plot", "confusion", "--scores", str(j), "--class-names", "ntu120", "--out"]
    assert main([*argv, str(tmp_path / "c.png")]) == 0
    assert (tmp_path / "c.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main([*argv, str(tmp_path / "c.pdf")]) == 2
    assert "c.pdf: plots are written as .svg or .png, not '.pdf'" in capsys.readouterr().err
    assert not (tmp_path / "c.pdf").exists()
