"""`msg3d train` on a folder that holds a run: a finished run is left as it is, and a new run
(--force) never leaves the folder without a checkpoint, wherever it is interrupted."""

import json
import shutil

import pytest
import torch

from msg3d.cli import main as cli_main
from msg3d.engine import loop
from msg3d.engine.saver import CheckpointSaver, RunLog, weights_sha256
from msg3d.engine.train import train
from test_engine_common import (
    REFERENCE,
    REFERENCE_SEED,
    TINY,
    assert_state_dicts_equal,
    load_state_dict,
    one_thread,
    read_epochs,
    read_log,
)

pytest_plugins = ["test_engine_common"]  # fixtures: tiny_store, reference_run, one_torch_thread
pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_torch_thread")]


def _folder_state(out):
    """Every file's bytes and modification time: what "nothing touched" means."""
    return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in out.iterdir()}


def _reference_args(tiny_store, out):
    return ["train", "--data", str(tiny_store), "--split", "tiny", "--out", str(out), "--device", "cpu",
            "--hparams-json", json.dumps(REFERENCE), "--seed", str(REFERENCE_SEED)]


def test_a_finished_run_is_left_as_it_is(reference_run, tiny_store, tmp_path, capsys):
    out = tmp_path / "run"
    shutil.copytree(reference_run, out)
    before = _folder_state(out)
    assert cli_main(_reference_args(tiny_store, out)) == 0
    err = capsys.readouterr().err
    assert f"msg3d train: {out}: training already finished at iteration 27/27 (epoch 3/3); nothing to do" in err
    assert "resuming from" not in err and "epoch 1/3" not in err
    assert _folder_state(out) == before

    result = train(tiny_store, "tiny", out, REFERENCE, seed=REFERENCE_SEED, device="cpu")
    reference = torch.load(reference_run / "latest.pth", weights_only=True)
    assert result["already_finished"] and result["epochs"] == reference["train_state"]["history"]
    assert result["best"] == reference["train_state"]["best"]
    assert result["final_weights_sha256"] == weights_sha256(reference["state_dict"])
    assert _folder_state(out) == before


def test_a_finished_run_with_changed_records_rebuilds_them(reference_run, tiny_store, tmp_path, capsys):
    """epochs.csv edited, best.pth of another run, config.json deleted: none of them is trusted; they
    are rebuilt from latest.pth (Snakemake deletes the declared outputs before rerunning a job)."""
    out = tmp_path / "run"
    shutil.copytree(reference_run, out)
    epochs = (out / "epochs.csv").read_text().splitlines()
    epochs[1] = epochs[1].replace(",", ",9", 1)  # another lr in epoch 1's row
    for damage in (lambda: (out / "epochs.csv").write_text("\n".join(epochs) + "\n"),
                   lambda: shutil.copy(out / "latest.pth", out / "best.pth"),
                   lambda: (out / "config.json").unlink()):
        damage()
        assert cli_main(_reference_args(tiny_store, out)) == 0
        assert (f"{out}: training already finished at iteration 27/27 (epoch 3/3); rebuilt config.json, epochs.csv "
                f"and best.pth from {out / 'latest.pth'}") in capsys.readouterr().err
        for name in ("epochs.csv", "config.json"):  # exactly the reference's (timing columns included)
            assert (out / name).read_bytes() == (reference_run / name).read_bytes(), name
        best = torch.load(out / "best.pth", weights_only=True)
        assert best["meta"] == torch.load(reference_run / "best.pth", weights_only=True)["meta"]
        assert_state_dicts_equal(best["state_dict"], load_state_dict(reference_run / "best.pth"))


class Interrupted(Exception):
    """Stands for a kill in the in-process runs below."""


def _raise(*args, **kwargs):
    raise Interrupted


def _after(function):
    def run_then_raise(*args, **kwargs):
        function(*args, **kwargs)
        raise Interrupted

    return run_then_raise


# A new run over the reference run's folder: 1 epoch of 3 iterations, latest.pth after each one.
NEW = dict(TINY, epochs=1, lr=0.05, checkpoint_interval=1)
# where the new run is stopped: before it has written anything, and between the files it replaces
CRASHES = {
    "first batch": (loop, "autocast", _raise),
    "new latest.pth": (CheckpointSaver, "_take_over", _raise),
    "new config.json": (RunLog, "release", _raise),
    "new log.jsonl": (RunLog, "release", _after(RunLog.release)),
}


@pytest.fixture(scope="module")
def new_run(tiny_store, tmp_path_factory):
    """NEW trained in an empty folder: what the folder must end up as."""
    out = tmp_path_factory.mktemp("runs") / "new"
    with one_thread():  # built before the function-scoped one_torch_thread: bit-identical needs equal threads
        train(tiny_store, "tiny", out, NEW, seed=REFERENCE_SEED, device="cpu")
    return out


@pytest.mark.parametrize("crash", list(CRASHES))
def test_a_new_run_replaces_the_old_one_only_after_its_first_checkpoint(crash, reference_run, new_run, tiny_store,
                                                                         tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    shutil.copytree(reference_run, out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    monkeypatch.setattr(*CRASHES[crash])
    with pytest.raises(Interrupted):
        train(tiny_store, "tiny", out, NEW, seed=REFERENCE_SEED, device="cpu", force=True)
    monkeypatch.undo()
    assert "--force: starting a new run" in capsys.readouterr().err

    # never without a checkpoint: the old run's latest.pth, or the new one's
    latest = torch.load(out / "latest.pth", weights_only=True)
    if crash == "first batch":
        assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # the old run, untouched
        assert cli_main(_reference_args(tiny_store, out)) == 0
        assert "training already finished at iteration 27/27 (epoch 3/3); nothing to do" in capsys.readouterr().err
    else:
        assert latest["meta"]["config"]["hparams"]["lr"] == 0.05 and latest["meta"]["iter"] == 1
    if crash == "new latest.pth":
        # config.json is still the old run's: neither run's command trusts the folder
        assert (out / "config.json").read_bytes() == before["config.json"]
        with pytest.raises(ValueError, match="holds a run with a different config"):
            train(tiny_store, "tiny", out, NEW, seed=REFERENCE_SEED, device="cpu")
        with pytest.raises(ValueError, match=r"latest.pth records another config \(its meta.config\) than"):
            train(tiny_store, "tiny", out, REFERENCE, seed=REFERENCE_SEED, device="cpu")

    # the workflow's rerun: continues the new run where it has its files, else starts it again
    train(tiny_store, "tiny", out, NEW, seed=REFERENCE_SEED, device="cpu", auto_resume=True)
    err = capsys.readouterr().err
    resumed = crash in ("new config.json", "new log.jsonl")
    assert ("has the same config; resuming" in err) == resumed and ("starting fresh" in err) != resumed
    assert (out / "config.json").read_bytes() == (new_run / "config.json").read_bytes()
    for name in ("latest.pth", "best.pth"):
        assert_state_dicts_equal(load_state_dict(out / name), load_state_dict(new_run / name))
    # the log is the new run's alone: one start, no record of the old run's 27 iterations
    log = out / "log.jsonl"
    starts = read_log(log, "start")
    assert len(starts) == 1 and starts[0]["run"] == torch.load(out / "latest.pth", weights_only=True)["meta"]["run_id"]
    assert read_log(log, "val") == read_log(new_run / "log.jsonl", "val")
    checkpoints = [r["iter"] for r in read_log(log, "checkpoint")]
    assert checkpoints == ([2, 3] if resumed else [1, 2, 3])  # the resumed ones lost the interrupted record
    assert max(json.loads(line)["iter"] for line in log.read_text().splitlines()) == 3
    assert read_epochs(out / "epochs.csv") == read_epochs(new_run / "epochs.csv")
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]
