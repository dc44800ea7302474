"""The records of a training run in RUN_DIR (timm's ``CheckpointSaver`` role), written by rank 0.

* ``latest.pth``   PYSKL-format checkpoint (``meta``, ``state_dict``, ``optimizer``) plus the resume
  state: ``scheduler``, ``train_state`` (``TrainState.state_dict()`` with the RNG states of every
  rank, the world size and the sampler position) and ``best_checkpoint`` (a copy of best.pth's
  contents, so a resume rebuilds best.pth even after it was deleted).
* ``best.pth``     weights of the epoch with the highest val top-1 (the first one on ties).
* ``epochs.csv``   ``EPOCH_COLUMNS``, one row per finished epoch; rebuilt from latest.pth on resume.
* ``log.jsonl``    one JSON object per line (``train``, ``val``, ``checkpoint``, ``best``,
  ``resume`` and ``error`` events); every line has ``iter`` (iterations done) and ``time``.
"""

import datetime
import json
import random
from pathlib import Path

import numpy as np
import torch

import msg3d
from msg3d.checkpoint import load_checkpoint, save_checkpoint
from msg3d.engine import distributed as distmod
from msg3d.fileio import write_csv_atomic, write_json_atomic, write_text_atomic

EPOCH_COLUMNS = ["epoch", "lr", "train_loss", "train_top1", "val_top1", "val_top5", "seconds", "samples_per_s"]


def capture_rng(device):
    """This process's torch, numpy, Python (and CUDA) RNG states, as checkpoint-safe values."""
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "bit_generator": np_state[0],
            "key": torch.from_numpy(np_state[1].astype(np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "python": random.getstate(),
    }
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def restore_rng(state, device):
    """Undo ``capture_rng``."""
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(
        (n["bit_generator"], n["key"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"])
    )
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


class RunLog:
    """Appends JSON lines to RUN_DIR/log.jsonl (rank 0); a no-op on other ranks."""

    def __init__(self, path, enabled):
        self.path = Path(path)
        self.enabled = enabled

    def write(self, **record):
        if not self.enabled:
            return
        record["time"] = datetime.datetime.now().isoformat(timespec="seconds")
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record, sort_keys=True) + "\n")

    def truncate_after(self, iteration):
        """Drop lines past ``iteration`` (and any torn last line) before resuming from it."""
        if not self.enabled or not self.path.exists():
            return
        kept = []
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if record.get("iter", 0) <= iteration:
                kept.append(line + "\n")
        write_text_atomic(self.path, "".join(kept))


class CheckpointSaver:
    """Owns latest.pth, best.pth (and its in-memory copy), epochs.csv and log.jsonl of one run.

    ``core`` is the unwrapped model (no DDP / compile wrapper); ``new_model()`` builds a fresh one
    of the same shape (to rewrite best.pth on resume). Every rank calls ``save_latest`` and
    ``end_epoch`` (the RNG states are gathered); only rank 0 writes.
    """

    def __init__(self, out, core, optimizer, schedule, config, dist_info, device, new_model):
        self.out = Path(out)
        self.core = core
        self.optimizer = optimizer
        self.schedule = schedule
        self.config = config
        self.dist_info = dist_info
        self.device = device
        self.new_model = new_model
        self.main = dist_info.is_main
        self.log = RunLog(self.out / "log.jsonl", self.main)
        self.best_checkpoint = None  # best.pth's meta and CPU weights (rank 0)
        self.latest_iter = None  # iteration of the last latest.pth written or resumed from

    def _meta(self, state, **more):
        return {"epoch": state.epoch, "iter": state.global_iter, "config": self.config, "seed": self.config["seed"],
                "msg3d_version": msg3d.__version__, "torch_version": str(torch.__version__), **more}

    def resume(self, path, state, *, force=False):
        """Load weights, optimizer, schedule, ``state`` and this rank's RNG from latest.pth ``path``;
        rebuild config.json, epochs.csv and best.pth from it. Returns the checkpoint's meta.

        ValueError when ``path`` holds no resume state, was trained with another seed (unless
        ``force``) or by another number of processes.
        """
        extra = load_checkpoint(self.core, path)
        train_state = extra.get("train_state")
        if train_state is None or "optimizer" not in extra:
            raise ValueError(f"{path} has no resume state (not a latest.pth written by msg3d train)")
        meta = extra.get("meta", {})
        trained_seed, run_seed = meta.get("seed"), self.config["seed"]
        if trained_seed not in (None, run_seed) and not force:
            # only reachable without a usable config.json (otherwise the config check refused it)
            raise ValueError(f"{path} was trained with seed {trained_seed}, this run has seed {run_seed}; "
                             f"resume with --seed {trained_seed} (or --force to continue with the new seed)")
        if train_state["world_size"] != self.dist_info.world_size:
            raise ValueError(f"{path} was written by {train_state['world_size']} processes; resume with the same "
                             f"number (now {self.dist_info.world_size})")
        self.optimizer.load_state_dict(extra["optimizer"])
        self.schedule.load_state_dict(extra["scheduler"])
        state.load_state_dict(train_state, source=path)
        restore_rng(train_state["rng"][self.dist_info.rank], self.device)
        self.latest_iter = state.global_iter
        self.log.truncate_after(state.global_iter)
        self.log.write(type="resume", iter=state.global_iter, epoch=state.epoch + 1, checkpoint=str(path))
        if self.main:
            # only now that the checkpoint fits: a refused --force resume leaves config.json as it was
            write_json_atomic(self.out / "config.json", self.config)
            self.write_epochs(state.history)
            self.best_checkpoint = extra.get("best_checkpoint")
            if self.best_checkpoint is not None:
                with torch.random.fork_rng(devices=[]):  # its random initial weights must not move the run's RNG
                    best_model = self.new_model()
                load_checkpoint(best_model, self.best_checkpoint["state_dict"])
                save_checkpoint(self.out / "best.pth", best_model, meta=self.best_checkpoint["meta"])
        return meta

    def save_latest(self, state):
        """Write latest.pth with everything a resume at ``state`` needs (collective: every rank)."""
        rng = distmod.all_gather_objects(self.dist_info, capture_rng(self.device))
        self.latest_iter = state.global_iter  # every rank names the same checkpoint in its errors
        if not self.main:
            return
        batch_size = self.config["hparams"]["batch_size"]
        resume_state = dict(state.state_dict(), rng=rng, world_size=self.dist_info.world_size,
                            sampler={"seed": self.config["seed"], "epoch": state.epoch,
                                     "start": state.iter_in_epoch * batch_size})
        save_checkpoint(self.out / "latest.pth", self.core, optimizer=self.optimizer,
                        meta=self._meta(state, torch_threads=torch.get_num_threads()),
                        scheduler=self.schedule.state_dict(), best_checkpoint=self.best_checkpoint,
                        train_state=resume_state)
        self.log.write(type="checkpoint", file="latest.pth", iter=state.global_iter)

    def last_good_checkpoint(self):
        """How a failure message names the checkpoint a rerun would resume from."""
        latest = self.out / "latest.pth"
        if self.latest_iter is None or not latest.exists():
            return "none written yet"
        return f"{latest} (iteration {self.latest_iter})"

    def end_epoch(self, state, row, val, improved):
        """After ``state.finish_epoch(row)`` (which says whether the epoch ``improved`` on the best val
        top-1): log the validation, save best.pth if it did, then latest.pth and epochs.csv
        (collective: every rank)."""
        self.log.write(type="val", epoch=row["epoch"], iter=state.global_iter, top1=row["val_top1"],
                       top5=row["val_top5"], mean_class_accuracy=val and val["mean_class_accuracy"])
        if improved and self.main:
            meta = self._meta(state, epoch=row["epoch"], val_top1=row["val_top1"], val_top5=row["val_top5"])
            save_checkpoint(self.out / "best.pth", self.core, meta=meta)
            self.best_checkpoint = {"meta": meta, "state_dict": {k: v.detach().to("cpu", copy=True)
                                                                 for k, v in self.core.state_dict().items()}}
            self.log.write(type="best", file="best.pth", iter=state.global_iter, epoch=row["epoch"],
                           top1=row["val_top1"])
        self.save_latest(state)
        if self.main:
            self.write_epochs(state.history)

    def write_epochs(self, history):
        """epochs.csv from the rows of the finished epochs (floats written with repr: exact)."""
        write_csv_atomic(self.out / "epochs.csv", EPOCH_COLUMNS,
                         ([repr(v) if isinstance(v, float) else v for v in (row[c] for c in EPOCH_COLUMNS)]
                          for row in history))
