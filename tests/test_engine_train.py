"""`msg3d train` on a tiny store: outputs, learning, determinism, exact resume after kill -9, DDP, errors."""

import contextlib
import json
import math
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from msg3d import fileio
from msg3d.cli import main as cli_main
from msg3d.data.dataset import SkeletonDataset
from msg3d.engine import distributed as distmod
from msg3d.engine.distributed import DistInfo
from msg3d.engine.evaluate import predict
from msg3d.engine.hparams import resolve_hparams
from msg3d.engine.loader import ResumableSampler, eval_loader, merge_rank_outputs, seed_worker
from msg3d.engine.schedule import cosine_lr
from msg3d.engine.loop import NonFiniteLossError
from msg3d.engine.run_dir import lock_run_dir
from msg3d.engine.saver import EPOCH_COLUMNS
from msg3d.engine.train import state_checksum, train
from msg3d.metrics import mean_class_accuracy, top_k_accuracy
from msg3d.models import build_model
from msg3d.provenance import code_digest
from test_engine_common import (
    REFERENCE,
    one_thread,
    REFERENCE_SEED,
    TINY,
    assert_state_dicts_equal,
    load_state_dict,
    make_store,
    read_epochs,
    read_log,
)

pytest_plugins = ["test_engine_common"]  # fixtures: tiny_store, reference_run, one_torch_thread
pytestmark = pytest.mark.usefixtures("one_torch_thread")

REPO = Path(__file__).resolve().parents[1]
CHECKPOINT_ITERS = [4, 8, 9, 12, 16, 18, 20, 24, 27]  # every 4 iterations inside an epoch + epoch ends


# Subprocesses run on one thread like the in-process runs (CPU kernels may sum in another order
# with another thread count).
ONE_THREAD_ENV = dict(os.environ, OMP_NUM_THREADS="1")


def _checkpoints_logged(log_path):
    """Iterations of the ``checkpoint`` lines in a growing log.jsonl (a torn last line is skipped)."""
    if not log_path.exists():
        return []
    iters = []
    for line in log_path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if record["type"] == "checkpoint":
            iters.append(record["iter"])
    return iters


def _in_use(out, pid):
    """``msg3d train``'s error line when process ``pid`` (on this host) trains in ``out``."""
    return f"msg3d train: error: {out} is in use by another msg3d train (pid {pid} on {socket.gethostname()})\n"


def _folder_bytes(out):
    return {p.name: p.read_bytes() for p in out.iterdir()}


def _kill_after_checkpoint(proc, run_dir, min_iter, stderr_path, timeout=300):
    """SIGKILL ``proc`` from outside once its log records a checkpoint at iteration >= ``min_iter``.

    Polls with a generous deadline so that a slow, loaded machine only makes the test slower; where
    the kill lands (maybe several iterations later, maybe inside a checkpoint write) varies, and the
    resume must be exact wherever it is.
    """
    deadline = time.monotonic() + timeout
    while not any(i >= min_iter for i in _checkpoints_logged(run_dir / "log.jsonl")):
        if proc.poll() is not None:
            pytest.fail(f"training exited ({proc.returncode}) before it could be killed:\n"
                        f"{stderr_path.read_text()[-3000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            proc.wait()
            pytest.fail(f"no checkpoint at iteration >= {min_iter} within {timeout} s:\n"
                        f"{stderr_path.read_text()[-3000:]}")
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()


# ----------------------------------------------------------------------------- errors (fast)


def test_missing_store_is_a_clear_error(tmp_path, capsys):
    code = cli_main(["train", "--data", str(tmp_path / "nowhere"), "--split", "tiny", "--out", str(tmp_path / "run")])
    assert code == 2
    err = capsys.readouterr().err
    assert "msg3d train: error:" in err and "nowhere" in err and "store not found" in err
    assert not (tmp_path / "run").exists()


def test_bad_split_lists_the_available_pairs(tiny_store, tmp_path):
    with pytest.raises(ValueError, match=r"split 'xsub' needs 'xsub_train' and 'xsub_val'.*split names: tiny \("):
        train(tiny_store, "xsub", tmp_path / "run", TINY, seed=0, device="cpu")
    assert not (tmp_path / "run").exists()


def test_unknown_hparam_on_the_command_line(tiny_store, tmp_path, capsys):
    code = cli_main(["train", "--data", str(tiny_store), "--split", "tiny", "--out", str(tmp_path / "run"),
                     "--hparams-json", '{"epoch": 1}'])
    assert code == 2
    assert "unknown hyper-parameter 'epoch'" in capsys.readouterr().err


def test_a_foreign_code_digest_is_refused_before_anything_is_written(tiny_store, tmp_path, capsys):
    code = cli_main(["train", "--data", str(tiny_store), "--split", "tiny", "--out", str(tmp_path / "run"),
                     "--expect-code-digest", "0123456789abcdef"])
    assert code == 2
    err = capsys.readouterr().err
    assert f"training code's digest is {code_digest('msg3d.engine.train')} but 0123456789abcdef was expected" in err
    assert not (tmp_path / "run").exists()


# ----------------------------------------------------------------------------- data order (fast)


def test_training_order_is_pyskls_and_resumes_mid_epoch():
    # PYSKL's sampler: randperm seeded with seed + epoch, padded with its first items to a
    # multiple of the world size, rank r takes every world-th item from r
    g = torch.Generator()
    g.manual_seed(3 + 2)
    perm = torch.randperm(11, generator=g).tolist()
    padded = perm + perm[:1]
    for rank in (0, 1):
        sampler = ResumableSampler(range(11), 2, rank, shuffle=True, seed=3)
        sampler.set_position(2)
        assert list(sampler) == padded[rank::2] and len(sampler) == 6
        sampler.set_position(2, 4)  # 4 items of the epoch already trained on
        assert list(sampler) == padded[rank::2][4:] and len(sampler) == 2
    with pytest.raises(ValueError, match=r"sampler position 7 outside \[0, 6\]"):
        sampler.set_position(2, 7)


def test_sharded_evaluation_is_put_back_in_dataset_order():
    per_rank = []
    for rank in (0, 1):
        loader = eval_loader(list(range(7)), 3, 0, DistInfo(rank=rank, world_size=2), seed=0, pin_memory=False)
        per_rank.append(torch.cat(list(loader)).numpy())
    assert [r.tolist() for r in per_rank] == [[0, 2, 4, 6], [1, 3, 5, 0]]  # 7 padded to 8
    assert merge_rank_outputs(per_rank, 7).tolist() == list(range(7))


def test_worker_seeding_is_pyskls():
    seed_worker(1, num_workers=2, rank=1, seed=10)  # 2 x 1 + 1 + 10 = 13
    drawn = (np.random.randint(2**31), random.random())
    np.random.seed(13)
    random.seed(13)
    assert drawn == (np.random.randint(2**31), random.random())


# ----------------------------------------------------------------------------- one reference run


@pytest.mark.slow
def test_run_outputs_and_learning(reference_run, tiny_store):
    config = json.loads((reference_run / "config.json").read_text())
    assert config["seed"] == REFERENCE_SEED
    assert config["hparams"] == resolve_hparams(REFERENCE).to_dict()
    assert config["data"]["store"] == str(Path(tiny_store).resolve())
    assert (config["data"]["train_split"], config["data"]["val_split"]) == ("tiny_train", "tiny_val")
    assert config["data"]["meta"]["modality"] == "j"
    assert config["runtime"] == {"device": "cpu", "world_size": 1}
    assert (config["hparams"]["amp"], config["hparams"]["compile"], config["hparams"]["tensorboard"]) == (
        "none", False, False)
    # 12 samples x repeat 3 / batch 4 -> 9 iterations per epoch; lr 0.03 x 4 / 4
    assert config["derived"] == {"lr_used": 0.03, "global_batch": 4, "iters_per_epoch": 9, "max_iters": 27}

    rows = read_epochs(reference_run / "epochs.csv", drop_timing=False)
    assert list(rows[0]) == EPOCH_COLUMNS
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]
    # lr column: the cosine rate at each epoch's first iteration
    assert [float(r["lr"]) for r in rows] == [cosine_lr(0.03, i, 27) for i in (0, 9, 18)]
    # it learns: the loss falls well below chance level (ln 3 = 1.0986), train accuracy rises
    losses = [float(r["train_loss"]) for r in rows]
    assert losses[0] > losses[1] > losses[2] and losses[2] < 1.0, losses
    assert float(rows[-1]["train_top1"]) > float(rows[0]["train_top1"]) + 0.1, rows
    assert all(0 <= float(r["val_top1"]) <= float(r["val_top5"]) == 1.0 for r in rows)  # 3 classes: top-5 = all

    ckpt = torch.load(reference_run / "latest.pth", map_location="cpu", weights_only=True)
    assert {"meta", "state_dict", "optimizer", "scheduler", "train_state"} <= set(ckpt)
    assert {k.split(".")[0] for k in ckpt["state_dict"]} == {"backbone", "cls_head"}
    assert ckpt["meta"]["config"] == config and ckpt["meta"]["iter"] == 27
    best = torch.load(reference_run / "best.pth", map_location="cpu", weights_only=True)
    best_epoch = max(rows, key=lambda r: (float(r["val_top1"]), -int(r["epoch"])))["epoch"]
    assert best["meta"]["epoch"] == int(best_epoch)

    log = reference_run / "log.jsonl"
    assert [r["iter"] for r in read_log(log, "val")] == [9, 18, 27]
    assert [(r["iter"], r["iters"], r["epoch"]) for r in read_log(log, "train")] == [
        (5, 5, 1), (10, 5, 2), (15, 5, 2), (20, 5, 3), (25, 5, 3)]
    assert [r["lr"] for r in read_log(log, "train")] == [cosine_lr(0.03, i - 1, 27) for i in (5, 10, 15, 20, 25)]
    # checkpoints at every epoch end and every 4 iterations inside an epoch
    assert [r["iter"] for r in read_log(log, "checkpoint")] == CHECKPOINT_ITERS
    assert not [p.name for p in reference_run.iterdir() if p.name.startswith(".")]  # no temp files left


@pytest.mark.slow
def test_auto_resume_survives_an_edit_outside_the_training_code(reference_run, tiny_store, tmp_path):
    """Killed after its first checkpoint, then msg3d/data/ntu_raw.py (not training code) edited: the
    training digest is unchanged, so --auto-resume continues, and ends with the uninterrupted weights."""
    checkout = tmp_path / "checkout"
    shutil.copytree(REPO / "msg3d", checkout / "msg3d", ignore=shutil.ignore_patterns("__pycache__"))
    out = tmp_path / "run"
    command = [sys.executable, "-m", "msg3d", "train", "--data", str(tiny_store), "--split", "tiny", "--out", str(out),
               "--hparams-json", json.dumps(REFERENCE), "--device", "cpu", "--seed", str(REFERENCE_SEED),
               "--auto-resume"]
    env = dict(ONE_THREAD_ENV, PYTHONPATH=str(checkout))
    stderr_path = tmp_path / "killed.stderr"
    with open(stderr_path, "w") as stderr:
        proc = subprocess.Popen(command, cwd=checkout, env=env, stdout=subprocess.DEVNULL, stderr=stderr)
        _kill_after_checkpoint(proc, out, 4, stderr_path)
    resumed_from = torch.load(out / "latest.pth", map_location="cpu", weights_only=True)["meta"]["iter"]
    assert resumed_from < 27, "killed only after the last checkpoint: nothing left to resume"

    ntu_raw = checkout / "msg3d" / "data" / "ntu_raw.py"
    ntu_raw.write_text(ntu_raw.read_text() + "\n# an edit the training does not run\n")
    proc = subprocess.run(command, cwd=checkout, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "has the same config; resuming" in proc.stderr
    assert [r["iter"] for r in read_log(out / "log.jsonl", "resume")] == [resumed_from]
    assert_state_dicts_equal(load_state_dict(out / "latest.pth"), load_state_dict(reference_run / "latest.pth"))
    assert read_epochs(out / "epochs.csv") == read_epochs(reference_run / "epochs.csv")


@pytest.mark.slow
def test_same_seed_same_results_whatever_the_worker_count(reference_run, tiny_store, tmp_path):
    # The per-item sampling RNG is seeded by (seed, epoch, item), so workers change nothing.
    train(tiny_store, "tiny", tmp_path / "again", dict(REFERENCE, num_workers=2), seed=REFERENCE_SEED,
          device="cpu")
    assert read_epochs(tmp_path / "again" / "epochs.csv") == read_epochs(reference_run / "epochs.csv")
    assert_state_dicts_equal(load_state_dict(tmp_path / "again" / "latest.pth"),
                             load_state_dict(reference_run / "latest.pth"))
    assert_state_dicts_equal(load_state_dict(tmp_path / "again" / "best.pth"),
                             load_state_dict(reference_run / "best.pth"))


@pytest.mark.slow
@pytest.mark.parametrize("flag", ["", "--resume", "--auto-resume"])
def test_kill_9_then_resume_is_bit_identical(flag, reference_run, tiny_store, tmp_path, capsys):
    """"": PYSKL's habit, the same command run again; --resume: the same, insisting on a checkpoint;
    --auto-resume: the workflow's."""
    out = tmp_path / "killed"
    args = ["train", "--data", str(tiny_store), "--split", "tiny", "--out", str(out),
            "--hparams-json", json.dumps(REFERENCE), "--device", "cpu"]
    stderr_path = tmp_path / "killed.stderr"
    with open(stderr_path, "w") as stderr:  # a file, not a pipe: a full pipe would stall the run
        proc = subprocess.Popen([sys.executable, "-m", "msg3d", *args, "--seed", str(REFERENCE_SEED)], cwd=REPO,
                                env=ONE_THREAD_ENV, stdout=subprocess.DEVNULL, stderr=stderr)
        # kill -9 once epoch 2 has begun (first checkpoint there: 12 of 27; REFERENCE's runs last 27)
        _kill_after_checkpoint(proc, out, 10, stderr_path)
    assert proc.returncode == -signal.SIGKILL, stderr_path.read_text()[-3000:]
    resumed_from = torch.load(out / "latest.pth", map_location="cpu", weights_only=True)["meta"]["iter"]
    assert resumed_from < 27, "killed only after the last checkpoint: nothing left to resume"

    if flag == "--resume":
        # a changed config is refused, naming the difference, and the folder is left as it was
        before = _folder_bytes(out)
        changed = dict(REFERENCE, epochs=4)
        with pytest.raises(ValueError, match=r"(?s)^--resume: .* holds a run with a different config.*"
                                             r"hparams.epochs: 3 -> 4"):
            train(tiny_store, "tiny", out, changed, resume=True, device="cpu")
        # config.json lost: latest.pth's own record is compared (its seed too), and config.json rebuilt
        (out / "config.json").unlink()
        with pytest.raises(ValueError, match=rf"(?s)records another config .* than this run:\n  seed: "
                                             rf"{REFERENCE_SEED} -> 5\n"):
            train(tiny_store, "tiny", out, REFERENCE, resume=True, device="cpu", seed=5)
        for name in ("config.json", ".lock"):  # the killed run's lock file goes with the next start's lock
            before.pop(name)
        assert _folder_bytes(out) == before
    else:
        # Snakemake deletes a job's declared outputs before rerunning it; latest.pth has what is needed
        for name in ("epochs.csv", "best.pth"):
            (out / name).unlink(missing_ok=True)
    # what a kill inside an atomic write leaves behind: the temp of a writer that is gone
    gone = subprocess.Popen(["true"])
    gone.wait()
    (out / f".latest.pth.tmp-{fileio._HOST}-{gone.pid}-x1y2z3").write_bytes(b"partial")

    rerun = args + ["--seed", str(REFERENCE_SEED)] if flag == "" else args + [flag]  # else the recorded seed
    assert cli_main(rerun) == 0, capsys.readouterr().err
    err = capsys.readouterr().err
    assert f"resuming from {out / 'latest.pth'} at iteration {resumed_from}/27 (epoch " in err
    said = {"": " (--force starts a new run)", "--resume": "", "--auto-resume": ""}[flag]
    assert f"{flag + ': ' if flag else ''}{out / 'latest.pth'} has the same config; resuming{said}\n" in err
    assert read_epochs(out / "epochs.csv") == read_epochs(reference_run / "epochs.csv")
    assert_state_dicts_equal(load_state_dict(out / "latest.pth"), load_state_dict(reference_run / "latest.pth"))
    assert_state_dicts_equal(load_state_dict(out / "best.pth"), load_state_dict(reference_run / "best.pth"))
    assert (out / "config.json").read_text() == (reference_run / "config.json").read_text()
    assert [r["iter"] for r in read_log(out / "log.jsonl", "checkpoint")] == CHECKPOINT_ITERS
    assert [r["iter"] for r in read_log(out / "log.jsonl", "resume")] == [resumed_from]
    # the interval averages of the log lines survive the interruption too
    assert read_log(out / "log.jsonl", "train") == read_log(reference_run / "log.jsonl", "train")
    assert read_log(out / "log.jsonl", "val") == read_log(reference_run / "log.jsonl", "val")
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]  # the temporary is cleaned up


@pytest.mark.slow
def test_changed_config_refused_unless_forced(reference_run, tiny_store, tmp_path, capsys):
    out = tmp_path / "run"
    shutil.copytree(reference_run, out)
    changed = dict(REFERENCE, epochs=1, repeat=1)
    args = ["train", "--data", str(tiny_store), "--split", "tiny", "--out", str(out), "--device", "cpu",
            "--hparams-json", json.dumps(changed)]
    before = (out / "config.json").read_text()
    assert cli_main(args) == 2
    err = capsys.readouterr().err
    assert "different config" in err and "\n  hparams.epochs: 3 -> 1\n" in err and "--force" in err
    assert (out / "config.json").read_text() == before
    # --force starts over in the same folder; the seed recorded there is reused (no --seed given)
    assert cli_main(args + ["--force"]) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["hparams"]["epochs"] == 1 and config["seed"] == REFERENCE_SEED
    assert len(read_epochs(out / "epochs.csv")) == 1
    assert torch.load(out / "latest.pth", weights_only=True)["meta"]["iter"] == 3


@pytest.mark.slow
def test_multistep_schedule_resumes_exactly_after_kill_9(tiny_store, tmp_path):
    """MS-G3D's step decay (the Kinetics recipe's schedule) resumes like the cosine one: killed
    after a checkpoint in epoch 2, the run ends with the uninterrupted run's weights and rates."""
    hp = dict(REFERENCE, lr_schedule="multistep", lr_steps=[1, 2], lr_gamma=0.5)
    args = ["train", "--data", str(tiny_store), "--split", "tiny", "--hparams-json", json.dumps(hp),
            "--device", "cpu", "--seed", str(REFERENCE_SEED)]
    with one_thread():
        assert cli_main(args + ["--out", str(tmp_path / "whole")]) == 0
    out = tmp_path / "killed"
    stderr_path = tmp_path / "killed.stderr"
    with open(stderr_path, "w") as stderr:
        proc = subprocess.Popen([sys.executable, "-m", "msg3d", *args, "--out", str(out)], cwd=REPO,
                                env=ONE_THREAD_ENV, stdout=subprocess.DEVNULL, stderr=stderr)
        _kill_after_checkpoint(proc, out, 10, stderr_path)
    assert proc.returncode == -signal.SIGKILL
    with one_thread():
        assert cli_main(args + ["--out", str(out), "--resume"]) == 0
    assert_state_dicts_equal(load_state_dict(out / "latest.pth"), load_state_dict(tmp_path / "whole" / "latest.pth"))
    assert read_epochs(out / "epochs.csv") == read_epochs(tmp_path / "whole" / "epochs.csv")
    rates = [r["lr"] for r in read_log(out / "log.jsonl", "train")]
    scaled = 0.03 * 4 / 4  # lr 0.03 given for lr_batch 4, batch 4
    assert rates == [r["lr"] for r in read_log(tmp_path / "whole" / "log.jsonl", "train")]
    assert set(rates) == {scaled, scaled * 0.5, scaled * 0.25}


class Interrupted(Exception):
    """Stands for a kill in the in-process runs below."""


def _val_top1s(monkeypatch, values):
    """Make the validations of the next run report ``values`` as val top-1, one per epoch, so that the
    test chooses the best epoch; ``None`` interrupts the run there (its last checkpoint is kept)."""
    values = iter(values)

    def fake_top_k_accuracy(probs, labels, ks):
        value = next(values)
        if value is None:
            raise Interrupted
        return [value, 1.0]

    monkeypatch.setattr("msg3d.engine.loop.top_k_accuracy", fake_top_k_accuracy)


@pytest.mark.slow
def test_auto_resume_rewrites_a_deleted_best_pth_of_an_earlier_epoch(tiny_store, tmp_path, monkeypatch, capsys):
    hp = dict(TINY, epochs=3, checkpoint_interval=2)  # 3 iterations per epoch; latest.pth also at 2, 4, 8
    _val_top1s(monkeypatch, [0.9, 0.5, 0.5])  # epoch 1 is the best
    train(tiny_store, "tiny", tmp_path / "full", hp, seed=3, device="cpu")

    out = tmp_path / "run"
    _val_top1s(monkeypatch, [0.9, 0.5, None])  # interrupted at epoch 3's end, after the checkpoint at 8
    with pytest.raises(Interrupted):
        train(tiny_store, "tiny", out, hp, seed=3, device="cpu", auto_resume=True)
    assert f"--auto-resume: no checkpoint {out / 'latest.pth'}; starting fresh" in capsys.readouterr().err
    assert torch.load(out / "latest.pth", weights_only=True)["meta"]["iter"] == 8
    # Snakemake deletes the declared outputs before rerunning; epoch 1's weights exist only in latest.pth
    for name in ("epochs.csv", "best.pth"):
        (out / name).unlink()
    _val_top1s(monkeypatch, [0.5])
    train(tiny_store, "tiny", out, hp, seed=3, device="cpu", auto_resume=True)
    assert "resuming from" in capsys.readouterr().err

    best, expected = (torch.load(d / "best.pth", weights_only=True) for d in (out, tmp_path / "full"))
    assert best["meta"] == expected["meta"] and best["meta"]["epoch"] == 1
    assert_state_dicts_equal(best["state_dict"], expected["state_dict"])
    final = load_state_dict(out / "latest.pth")
    assert any(not torch.equal(final[k], v) for k, v in best["state_dict"].items())  # not the last weights
    assert read_epochs(out / "epochs.csv") == read_epochs(tmp_path / "full" / "epochs.csv")


@pytest.mark.slow
def test_auto_resume_starts_fresh_when_config_or_code_differs(tiny_store, tmp_path, capsys):
    hp = dict(TINY, epochs=1)
    fresh = tmp_path / "fresh"
    train(tiny_store, "tiny", fresh, dict(hp, lr=0.05), seed=0, device="cpu")
    out = tmp_path / "run"
    train(tiny_store, "tiny", out, hp, seed=0, device="cpu")
    capsys.readouterr()

    # another learning rate: the run folder is replaced by a new run, as if it had been empty
    train(tiny_store, "tiny", out, dict(hp, lr=0.05), seed=0, device="cpu", auto_resume=True)
    err = capsys.readouterr().err
    assert (f"--auto-resume: {out} holds a run with a different config ({out / 'config.json'}): derived.lr_used: "
            f"0.003125 -> 0.0015625; hparams.lr: 0.1 -> 0.05; starting fresh") in err
    assert (out / "config.json").read_text() == (fresh / "config.json").read_text()
    assert read_epochs(out / "epochs.csv") == read_epochs(fresh / "epochs.csv")
    for name in ("latest.pth", "best.pth"):
        assert_state_dicts_equal(load_state_dict(out / name), load_state_dict(fresh / name))
    assert read_log(out / "log.jsonl", "checkpoint") == read_log(fresh / "log.jsonl", "checkpoint")

    # trained by other code: --resume refuses, --auto-resume starts over
    config = json.loads((out / "config.json").read_text())
    digest = config["code_digest"]
    (out / "config.json").write_text(json.dumps(dict(config, code_digest="0123456789abcdef")))
    with pytest.raises(ValueError, match=rf"(?s)--resume: .* holds a run with a different config.*code_digest: "
                                         rf"'0123456789abcdef' -> '{digest}'"):
        train(tiny_store, "tiny", out, dict(hp, lr=0.05), seed=0, device="cpu", resume=True)
    train(tiny_store, "tiny", out, dict(hp, lr=0.05), seed=0, device="cpu", auto_resume=True)
    assert (f"holds a run with a different config ({out / 'config.json'}): code_digest: '0123456789abcdef' -> "
            f"'{digest}'; starting fresh") in capsys.readouterr().err
    assert json.loads((out / "config.json").read_text())["code_digest"] == digest
    assert not read_log(out / "log.jsonl", "resume")
    assert [r["iter"] for r in read_log(out / "log.jsonl", "checkpoint")] == [3]  # one run's, not two


# ----------------------------------------------------------------------------- one writer per run folder


def _hold_run_lock(out):
    """A child process that holds RUN_DIR's lock, as a running ``msg3d train`` does, until killed."""
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom msg3d.engine.run_dir import lock_run_dir\n"
         "with lock_run_dir(sys.argv[1]):\n    print('locked', flush=True)\n    time.sleep(600)\n", str(out)],
        cwd=REPO, env=ONE_THREAD_ENV, stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline() == "locked\n"
    return holder


@pytest.mark.slow
def test_a_second_writer_is_refused_at_once_and_a_killed_holder_does_not_block(reference_run, tiny_store, tmp_path,
                                                                               capsys):
    out = tmp_path / "run"
    shutil.copytree(reference_run, out)
    before = _folder_bytes(out)
    args = ["train", "--data", str(tiny_store), "--split", "tiny", "--out", str(out), "--device", "cpu"]
    holder = _hold_run_lock(out)
    try:
        # another config, as a rerun after `snakemake --unlock` with an edited config: it would start fresh;
        # the timeout fails a start that waits for the lock instead of refusing
        second = subprocess.run([sys.executable, "-m", "msg3d", *args, "--auto-resume",
                                 "--hparams-json", json.dumps(dict(REFERENCE, lr=0.05))],
                                cwd=REPO, env=ONE_THREAD_ENV, capture_output=True, text=True, timeout=120)
        assert (second.returncode, second.stderr) == (2, _in_use(out, holder.pid))
        assert cli_main(args + ["--force", "--hparams-json", json.dumps(dict(REFERENCE, epochs=1))]) == 2
        assert capsys.readouterr().err == _in_use(out, holder.pid)
        after = _folder_bytes(out)
        assert after.pop(".lock") == f"pid {holder.pid} on {socket.gethostname()}\n".encode()
        assert after == before  # nothing read-and-deleted, nothing written
    finally:
        holder.kill()
        holder.wait()
    assert holder.returncode == -signal.SIGKILL and (out / ".lock").exists()  # left behind, but unlocked
    assert cli_main(args + ["--auto-resume", "--hparams-json", json.dumps(REFERENCE)]) == 0
    assert f"--auto-resume: {out / 'latest.pth'} has the same config; resuming" in capsys.readouterr().err
    assert not (out / ".lock").exists()


def test_the_run_folder_stays_locked_until_the_run_ends(tiny_store, tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    hp = dict(TINY, epochs=2)
    args = ["train", "--data", str(tiny_store), "--split", "tiny", "--out", str(out), "--device", "cpu",
            "--hparams-json", json.dumps(hp)]
    codes = []

    def validate_while_another_starts(probs, labels, ks):  # at each epoch's end, in the middle of the run
        codes.append(cli_main(args + ["--force"]))  # would start over in the folder
        return [0.5, 1.0]

    monkeypatch.setattr("msg3d.engine.loop.top_k_accuracy", validate_while_another_starts)
    train(tiny_store, "tiny", out, hp, seed=0, device="cpu")
    assert codes == [2, 2]
    assert capsys.readouterr().err.count(_in_use(out, os.getpid())) == 2
    assert [r["iter"] for r in read_log(out / "log.jsonl", "checkpoint")] == [3, 6]  # one run's
    assert not (out / ".lock").exists()
    monkeypatch.undo()
    assert cli_main(args + ["--auto-resume"]) == 0  # released
    assert "has the same config; resuming" in capsys.readouterr().err


@pytest.mark.slow
def test_config_json_and_latest_pth_of_different_runs_are_never_resumed(tiny_store, tmp_path, capsys):
    hp_a, hp_b = dict(TINY, epochs=1), dict(TINY, epochs=1, lr=0.05)
    out, fresh_b = tmp_path / "run", tmp_path / "b"
    train(tiny_store, "tiny", out, hp_a, seed=0, device="cpu")
    train(tiny_store, "tiny", fresh_b, hp_b, seed=0, device="cpu")
    # what two unlocked writers left: B's config.json over A's checkpoints
    shutil.copy(fresh_b / "config.json", out / "config.json")
    before = _folder_bytes(out)
    capsys.readouterr()
    args = ["train", "--data", str(tiny_store), "--split", "tiny", "--out", str(out), "--device", "cpu",
            "--hparams-json", json.dumps(hp_b)]
    mixed = f"{out / 'latest.pth'} records another config (its meta.config) than {out / 'config.json'}"

    assert cli_main(args + ["--resume"]) == 2
    err = capsys.readouterr().err
    assert f"--resume: {mixed}:\n  derived.lr_used: 0.003125 -> 0.0015625\n  hparams.lr: 0.1 -> 0.05\n" in err
    assert "--force" in err and _folder_bytes(out) == before

    assert cli_main(args + ["--auto-resume"]) == 0
    err = capsys.readouterr().err
    assert (f"--auto-resume: {mixed}: derived.lr_used: 0.003125 -> 0.0015625; hparams.lr: 0.1 -> 0.05; "
            f"starting fresh") in err
    # the folder now holds B's run alone, as if it had been empty
    config = json.loads((out / "config.json").read_text())
    assert config == json.loads((fresh_b / "config.json").read_text())
    assert torch.load(out / "latest.pth", weights_only=True)["meta"]["config"] == config
    assert read_epochs(out / "epochs.csv") == read_epochs(fresh_b / "epochs.csv")
    for name in ("latest.pth", "best.pth"):
        assert_state_dicts_equal(load_state_dict(out / name), load_state_dict(fresh_b / name))


@pytest.mark.slow
def test_a_moved_project_resumes_instead_of_retraining(reference_run, tiny_store, tmp_path, capsys):
    moved = tmp_path / "elsewhere"
    shutil.copytree(tiny_store, moved / "store")
    shutil.copytree(reference_run, moved / "run")
    out = moved / "run"
    args = ["train", "--data", str(moved / "store"), "--split", "tiny", "--out", str(out), "--device", "cpu",
            "--hparams-json", json.dumps(REFERENCE), "--auto-resume"]
    assert cli_main(args) == 0
    err = capsys.readouterr().err
    assert f"--auto-resume: {out / 'latest.pth'} has the same config; resuming" in err
    assert f"{out}: training already finished at iteration 27/27 (epoch 3/3); nothing to do" in err
    # Snakemake deletes the declared outputs before a rerun: rebuilt, with the store's new path
    (out / "epochs.csv").unlink()
    assert cli_main(args) == 0
    err = capsys.readouterr().err
    assert (f"{out}: training already finished at iteration 27/27 (epoch 3/3); rebuilt config.json, epochs.csv "
            f"and best.pth from {out / 'latest.pth'}") in err
    config, reference = (json.loads((d / "config.json").read_text()) for d in (out, reference_run))
    assert config["data"].pop("store") == str((moved / "store").resolve())  # recorded anew, for information
    reference["data"].pop("store")
    assert config == reference
    assert_state_dicts_equal(load_state_dict(out / "latest.pth"), load_state_dict(reference_run / "latest.pth"))
    assert read_epochs(out / "epochs.csv") == read_epochs(reference_run / "epochs.csv")


def test_resume_auto_resume_and_force_exclude_each_other(tmp_path, capsys):
    for modes in ({"auto_resume": True, "resume": True}, {"auto_resume": True, "force": True},
                  {"resume": True, "force": True}):
        with pytest.raises(ValueError, match="--resume, --auto-resume and --force exclude each other"):
            train(tmp_path / "store", "tiny", tmp_path / "run", **modes)
    with pytest.raises(SystemExit):
        cli_main(["train", "--data", "s", "--split", "tiny", "--out", "r", "--resume", "--force"])
    assert "not allowed with argument" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_bf16_autocast_run(tiny_store, tmp_path):
    out = tmp_path / "bf16"
    result = train(tiny_store, "tiny", out, dict(TINY, epochs=1, amp="bf16"), seed=0, device="cpu")
    assert json.loads((out / "config.json").read_text())["hparams"]["amp"] == "bf16"
    assert math.isfinite(result["epochs"][0]["train_loss"])
    # weights stay float32 (autocast computes in bf16, parameters and checkpoint are fp32)
    assert {t.dtype for t in load_state_dict(out / "latest.pth").values()} <= {torch.float32, torch.int64}


def test_amp_and_compile_come_from_the_hparams_and_the_flags_override_them(tiny_store, tmp_path, monkeypatch):
    """The config (workflow train: section, --hparams-json) reaches amp and compile; --amp/--compile
    override it; config.json records them once, under hparams."""
    compiled, autocasts = [], []
    monkeypatch.setattr(torch.nn.Module, "compile", lambda self, *a, **k: compiled.append(type(self).__name__))
    from msg3d.engine import loop

    def recording_autocast(device, amp):
        autocasts.append(amp)
        return contextlib.nullcontext()  # the float32 step: only the choice is under test here

    monkeypatch.setattr(loop, "autocast", recording_autocast)
    hp = dict(TINY, epochs=1, amp="bf16", compile=True)
    base = ["train", "--data", str(tiny_store), "--split", "tiny", "--device", "cpu", "--seed", "0"]
    assert cli_main(base + ["--out", str(tmp_path / "a"), "--hparams-json", json.dumps(hp)]) == 0
    config = json.loads((tmp_path / "a" / "config.json").read_text())
    assert (config["hparams"]["amp"], config["hparams"]["compile"]) == ("bf16", True)
    assert "amp" not in config["runtime"] and "compile" not in config["runtime"]
    assert compiled == ["RecognizerGCN"] and set(autocasts) == {"bf16"} and len(autocasts) == 3
    compiled.clear(), autocasts.clear()
    assert cli_main(base + ["--out", str(tmp_path / "b"), "--hparams-json", json.dumps(dict(TINY, epochs=1)),
                            "--amp", "bf16", "--compile"]) == 0
    assert json.loads((tmp_path / "b" / "config.json").read_text())["hparams"] == config["hparams"]
    assert compiled == ["RecognizerGCN"] and set(autocasts) == {"bf16"}
    autocasts.clear()
    assert cli_main(base + ["--out", str(tmp_path / "c"), "--hparams-json", json.dumps(hp), "--amp", "none"]) == 0
    assert json.loads((tmp_path / "c" / "config.json").read_text())["hparams"]["amp"] == "none"
    assert set(autocasts) == {None}


@pytest.mark.slow
def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tiny_store, tmp_path):
    out = tmp_path / "diverged"
    hp = dict(TINY, epochs=1, lr=1e35, lr_batch=4, checkpoint_interval=1)
    with pytest.raises(NonFiniteLossError, match=r"non-finite training loss .* at iteration (\d+)") as info:
        train(tiny_store, "tiny", out, hp, seed=0, device="cpu")
    bad_iter = int(re.search(r"at iteration (\d+)", str(info.value)).group(1))
    assert bad_iter >= 2
    meta = torch.load(out / "latest.pth", map_location="cpu", weights_only=True)
    assert meta["meta"]["iter"] == bad_iter - 1
    assert all(torch.isfinite(t).all() for t in meta["state_dict"].values() if t.is_floating_point())
    assert f"latest.pth (iteration {bad_iter - 1})" in str(info.value)


@pytest.mark.slow
def test_ddp_two_cpu_ranks_agree_and_rank0_writes_once(tmp_path):
    # 11 train / 7 val samples: odd counts, so both the training and the validation sampler pad
    store = make_store(tmp_path / "store", num_train=11, num_val=7)
    out = tmp_path / "ddp"
    hp = dict(TINY, batch_size=3, lr_batch=6, checkpoint_interval=1)  # ceil(11 / 2) = 6 per rank: 2 iters/epoch
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "msg3d",
               "train", "--data", str(store), "--split", "tiny", "--out", str(out), "--device", "cpu",
               "--seed", "5", "--hparams-json", json.dumps(hp)]
    # another msg3d train holds the folder: rank 0 is refused, and rank 1 stops with its error instead of waiting
    with lock_run_dir(out):
        proc = subprocess.run(command, cwd=REPO, env=ONE_THREAD_ENV, capture_output=True, text=True, timeout=300)
    # (the ranks' lines may interleave: print writes the line end on its own)
    refused = _in_use(out, os.getpid()).rstrip("\n")
    assert proc.returncode != 0 and proc.stderr.count(refused) == 2, proc.stderr[-3000:]
    assert not out.exists()

    proc = subprocess.run(command, cwd=REPO, env=ONE_THREAD_ENV, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    sums = dict(re.findall(r"rank (\d) final weights sha256 ([0-9a-f]{64})", proc.stderr))
    assert set(sums) == {"0", "1"} and sums["0"] == sums["1"], proc.stderr[-2000:]

    config = json.loads((out / "config.json").read_text())
    assert config["runtime"]["world_size"] == 2
    derived = config["derived"]
    assert derived.pop("lr_used") == pytest.approx(0.1)  # 0.1 x (3 x 2) / 6
    assert derived == {"global_batch": 6, "iters_per_epoch": 2, "max_iters": 4}
    log = out / "log.jsonl"
    assert [r["iter"] for r in read_log(log, "checkpoint")] == [1, 2, 3, 4]  # once each, not per rank
    assert [r["iter"] for r in read_log(log, "val")] == [2, 4]
    assert len(read_epochs(out / "epochs.csv")) == 2
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]
    # the saved weights are the ranks' weights
    model = build_model(3, layout="nturgb+d", **TINY["model"])
    model.load_state_dict(load_state_dict(out / "latest.pth"))
    assert state_checksum(model) == sums["0"]
    # the sharded validation scored each of the 7 val samples once: as one process scores them
    ds = SkeletonDataset(store, "tiny_val", clip_len=TINY["clip_len"], test_mode=True)
    probs = predict(model, DataLoader(ds, batch_size=len(ds)), torch.device("cpu"))
    val = read_log(log, "val")[-1]
    assert [val["top1"], val["top5"]] == top_k_accuracy(probs, ds.labels, (1, 5))
    assert val["mean_class_accuracy"] == mean_class_accuracy(probs, ds.labels)


class _NewDDP:
    """A stand-in with PyTorch 2.14's DistributedDataParallel signature (forward_sync_buffers)."""

    def __init__(self, module, device_ids=None, broadcast_buffers=None, forward_sync_buffers=None):
        self.kwargs = {"device_ids": device_ids, "broadcast_buffers": broadcast_buffers,
                       "forward_sync_buffers": forward_sync_buffers}


def test_ddp_keeps_bn_statistics_per_process_without_the_deprecated_argument(monkeypatch, tmp_path):
    """PyTorch 2.14 warns about broadcast_buffers; its replacement is used where it exists, and
    either way buffers are not broadcast before each forward (PYSKL's per-process BN)."""
    monkeypatch.setattr(torch.nn.parallel, "DistributedDataParallel", _NewDDP)
    wrapped = distmod.data_parallel(torch.nn.BatchNorm1d(3), torch.device("cpu"))
    assert wrapped.kwargs == {"device_ids": None, "broadcast_buffers": None, "forward_sync_buffers": False}
    monkeypatch.undo()

    torch.distributed.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", FutureWarning)
            ddp = distmod.data_parallel(torch.nn.BatchNorm1d(3), torch.device("cpu"))
        assert ddp.broadcast_buffers is False  # a property of forward_sync_buffers in 2.14
    finally:
        torch.distributed.destroy_process_group()


@pytest.mark.parametrize("stop_at", [5, 9])
def test_max_iters_stops_a_run_that_the_same_command_continues_bit_identically(stop_at, reference_run, tiny_store,
                                                                             tmp_path, capsys):
    """--max-iters inside an epoch (5: latest.pth written there) and at an epoch's end (9: validated
    and checkpointed as usual); the run then continues to REFERENCE's uninterrupted weights."""
    out = tmp_path / "smoke"
    summary = train(tiny_store, "tiny", out, REFERENCE, seed=REFERENCE_SEED, device="cpu", stop_at=stop_at)
    assert summary["stopped_at"] == stop_at
    assert torch.load(out / "latest.pth", map_location="cpu", weights_only=True)["meta"]["iter"] == stop_at
    assert len(summary["epochs"]) == stop_at // 9
    assert f"stopped at iteration {stop_at}/27 (--max-iters {stop_at})" in capsys.readouterr().err
    summary = train(tiny_store, "tiny", out, REFERENCE, device="cpu")
    assert summary["stopped_at"] is None and len(summary["epochs"]) == 3
    assert_state_dicts_equal(load_state_dict(out / "latest.pth"), load_state_dict(reference_run / "latest.pth"))
    assert read_epochs(out / "epochs.csv") == read_epochs(reference_run / "epochs.csv")
    with pytest.raises(ValueError, match="--max-iters must be 1 or more, got 0"):
        train(tiny_store, "tiny", tmp_path / "zero", REFERENCE, device="cpu", stop_at=0)
