"""What `msg3d train` tells while it runs: the console line and log.jsonl's train records (mmcv's
fields: smoothed loss, top-1, lr, time per iteration, data time, samples/s, memory, ETA), and the
optional TensorBoard scalars."""

import datetime
import importlib
import json
import re

import pytest

from msg3d.cli import main as cli_main
from msg3d.engine.train import train
from test_engine_common import TINY, assert_state_dicts_equal, load_state_dict

pytest_plugins = ["test_engine_common"]  # fixtures: tiny_store, one_torch_thread
pytestmark = pytest.mark.usefixtures("one_torch_thread")

# 12 samples / batch 4: 3 iterations per epoch, 6 in all
HP = dict(TINY, epochs=2, log_interval=3)


def _records(path, kind="train"):
    """log.jsonl's records of one type, all fields."""
    return [r for r in map(json.loads, path.read_text().splitlines()) if r["type"] == kind]


def _mean(values):
    return sum(values) / len(values)


def test_train_records_and_console_lines_show_the_window(tiny_store, tmp_path, capsys):
    train(tiny_store, "tiny", tmp_path / "every", dict(HP, log_interval=1), seed=0, device="cpu",
          progress_seconds=1e9)
    per_batch = _records(tmp_path / "every" / "log.jsonl")  # a window of one batch: that batch's numbers
    capsys.readouterr()
    train(tiny_store, "tiny", tmp_path / "run", HP, seed=0, device="cpu", progress_seconds=1e9)
    err = capsys.readouterr().err
    records = _records(tmp_path / "run" / "log.jsonl")

    assert [(r["iter"], r["epoch"], r["epoch_iter"], r["iters"]) for r in records] == [(3, 1, 3, 3), (6, 2, 3, 3)]
    for record in records:
        window = per_batch[record["iter"] - 3:record["iter"]]
        # the smoothed loss and top-1: means over the window's batches (equal batch sizes here)
        assert record["loss"] == pytest.approx(_mean([b["loss"] for b in window]), rel=1e-12)
        assert record["top1"] == pytest.approx(_mean([b["top1"] for b in window]), rel=1e-12)
        assert record["lr"] == window[-1]["lr"]
        assert 0 <= record["data_time"] <= record["iter_time"] < 60
        assert record["samples_per_s"] == pytest.approx(4 / record["iter_time"], rel=1e-9)  # 4 samples/iteration
        assert 50 < record["memory_mb"] < 100_000  # this process's peak RSS, MiB
        assert record["eta_s"] >= 0
        assert abs(datetime.datetime.fromisoformat(record["time"]) - datetime.datetime.now()).total_seconds() < 600
    assert records[-1]["eta_s"] == 0  # nothing left
    # log_interval changes what is logged, never the training
    assert_state_dicts_equal(load_state_dict(tmp_path / "run" / "latest.pth"),
                             load_state_dict(tmp_path / "every" / "latest.pth"))

    lines = [line for line in err.splitlines() if "] epoch " in line]
    # the first iteration at once (the run has started), then, with progress_seconds 1e9, the log lines only
    assert len(lines) == 3 and "[1/6] epoch 1/2 iter 1/3 " in lines[0] and " over 1 iter " in lines[0]
    for line, record in zip(lines[1:], records):
        assert re.fullmatch(
            rf"\d{{4}}-\d\d-\d\d \d\d:\d\d:\d\d \[{record['iter']}/6\] epoch {record['epoch']}/2 iter 3/3 \| "
            rf"lr {record['lr']:.4g} \| loss {record['loss']:.4f} top1 {record['top1']:.3f} over 3 iters \| "
            rf"time {record['iter_time']:.3f} s data {record['data_time']:.3f} s \| "
            rf"{record['samples_per_s']:.1f} samples/s \| mem \d+ MiB \(peak RSS\) ETA \d+:\d\d", line), line


def test_a_progress_line_between_log_lines_shows_the_window_so_far(tiny_store, tmp_path, capsys):
    train(tiny_store, "tiny", tmp_path / "every", dict(HP, log_interval=1), seed=0, device="cpu",
          progress_seconds=1e9)
    per_batch = _records(tmp_path / "every" / "log.jsonl")
    capsys.readouterr()
    train(tiny_store, "tiny", tmp_path / "run", HP, seed=0, device="cpu", progress_seconds=0)
    lines = [line for line in capsys.readouterr().err.splitlines() if "] epoch " in line]
    assert len(lines) == 6  # every iteration: the console is never silent for progress_seconds
    second = lines[1]
    assert "[2/6] epoch 1/2 iter 2/3" in second and " over 2 iters " in second
    assert f"loss {_mean([b['loss'] for b in per_batch[:2]]):.4f} " in second
    assert [r["iter"] for r in _records(tmp_path / "run" / "log.jsonl")] == [3, 6]  # the log keeps its interval


def test_tensorboard_without_the_package_is_a_clear_error(tiny_store, tmp_path, monkeypatch, capsys):
    real_import = importlib.import_module

    def without_tensorboard(name, *args):
        if name == "torch.utils.tensorboard":
            raise ImportError("No module named 'tensorboard'")
        return real_import(name, *args)

    monkeypatch.setattr(importlib, "import_module", without_tensorboard)
    out = tmp_path / "run"
    args = ["train", "--data", str(tiny_store), "--split", "tiny", "--out", str(out), "--device", "cpu"]
    for asked in (["--tensorboard"], ["--hparams-json", json.dumps({"tensorboard": True})]):
        assert cli_main(args + asked) == 2
        err = capsys.readouterr().err
        assert err.startswith("msg3d train: error: TensorBoard logging was asked for") and err.count("\n") == 1
        assert "pip install -e '.[tensorboard]'" in err and "No module named 'tensorboard'" in err
    assert not out.exists()


@pytest.mark.slow
def test_tensorboard_scalars_are_the_log_records(tiny_store, tmp_path):
    pytest.importorskip("tensorboard", reason="the tensorboard extra (pip install -e '.[tensorboard]') is not installed")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "run"
    assert cli_main(["train", "--data", str(tiny_store), "--split", "tiny", "--out", str(out), "--device", "cpu",
                     "--seed", "0", "--hparams-json", json.dumps(dict(HP, log_interval=1)), "--tensorboard"]) == 0
    assert json.loads((out / "config.json").read_text())["hparams"]["tensorboard"] is True
    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    train_records, val_records = _records(out / "log.jsonl"), _records(out / "log.jsonl", "val")

    def scalars(tag):
        return [(e.step, e.value) for e in events.Scalars(tag)]

    for tag, key in (("train/loss", "loss"), ("train/top1", "top1"), ("train/lr", "lr"),
                     ("time/iter_s", "iter_time"), ("memory/peak_mb", "memory_mb")):
        assert scalars(tag) == [(r["iter"], pytest.approx(r[key], rel=1e-6)) for r in train_records], tag
    assert scalars("val/top1") == [(r["iter"], pytest.approx(r["top1"], rel=1e-6)) for r in val_records]
    assert [step for step, _ in scalars("val/mean_class_accuracy")] == [3, 6]


@pytest.mark.slow
def test_tensorboard_after_a_resume_shows_each_step_once(tiny_store, tmp_path, monkeypatch):
    """Interrupted after logging iterations 5 and 6 past its checkpoint at 4, then resumed: TensorBoard
    hides what the interrupted process logged past the checkpoint (purge_step), so every step shows
    the uninterrupted run's value once."""
    pytest.importorskip("tensorboard", reason="the tensorboard extra (pip install -e '.[tensorboard]') is not installed")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from msg3d.engine.saver import CheckpointSaver

    hp = dict(HP, log_interval=1, checkpoint_interval=2, tensorboard=True)
    train(tiny_store, "tiny", tmp_path / "whole", hp, seed=0, device="cpu")

    class Interrupted(Exception):
        pass

    end_epoch, ends = CheckpointSaver.end_epoch, []

    def interrupt_at_the_second_epoch_end(*args, **kwargs):
        ends.append(1)
        if len(ends) == 2:
            raise Interrupted
        return end_epoch(*args, **kwargs)

    monkeypatch.setattr(CheckpointSaver, "end_epoch", interrupt_at_the_second_epoch_end)
    with pytest.raises(Interrupted):
        train(tiny_store, "tiny", tmp_path / "run", hp, seed=0, device="cpu")
    monkeypatch.undo()
    train(tiny_store, "tiny", tmp_path / "run", hp, seed=0, device="cpu")

    def losses(run):
        events = EventAccumulator(str(tmp_path / run / "tensorboard"))
        events.Reload()
        return [(e.step, e.value) for e in events.Scalars("train/loss")]

    assert [step for step, _ in losses("run")] == [1, 2, 3, 4, 5, 6]
    assert losses("run") == losses("whole")
