"""Plots: they are written, their content follows the inputs, and reruns give the same bytes."""

import pytest

from msg3d.cli import main
from msg3d.report.plots import plot_confusion, plot_curves, plot_per_class, read_epochs
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
    plot_confusion(j, tmp_path / "c1.svg")
    plot_confusion(j, tmp_path / "c2.svg")
    svg = (tmp_path / "c1.svg").read_text()
    assert svg == (tmp_path / "c2.svg").read_text()
    assert "A001" in svg and "A003" in svg
    plot_per_class({"j": j, "b": b}, tmp_path / "p.svg", title="per class")
    svg = (tmp_path / "p.svg").read_text()
    assert "per class" in svg and "top-1 accuracy (%)" in svg


def test_cli_errors(tmp_path, capsys):
    assert main(["plot", "confusion", "--scores", str(tmp_path / "none.pkl"), "--out", str(tmp_path / "x.svg")]) == 2
    assert "none.pkl: scores file not found" in capsys.readouterr().err
    assert main(["plot", "per-class", "--scores", "j", "--out", str(tmp_path / "x.svg")]) == 2
    assert "--scores expects NAME=PATH" in capsys.readouterr().err
