"""The records of a training run in RUN_DIR (timm's ``CheckpointSaver`` role), written by rank 0.

* ``config.json``  the run's config (``msg3d.engine.train.make_config``).
* ``latest.pth``   PYSKL-format checkpoint (``meta``, ``state_dict``, ``optimizer``) plus the resume
  state: ``scheduler``, ``train_state`` (``TrainState.state_dict()`` with the RNG states of every
  rank, the world size and the sampler position) and ``best_checkpoint`` (a copy of best.pth's
  contents, so a resume rebuilds best.pth even after it was deleted). ``meta.run_id`` names the
  run (random, kept across resumes), so that a log of another run is never continued.
* ``best.pth``     weights of the epoch with the highest val top-1 (the first one on ties).
* ``epochs.csv``   ``EPOCH_COLUMNS``, one row per finished epoch; rebuilt from latest.pth on resume.
* ``log.jsonl``    one JSON object per line, each with ``type``, ``iter`` (iterations done) and
  ``time`` (local ISO timestamp): ``start`` (first line; ``run``: the run id), ``train`` (every
  ``log_interval`` iterations: ``msg3d.engine.loop.train_record``), ``val``, ``best``,
  ``checkpoint``, ``resume`` and ``error``. ``MEASURED_KEYS`` are measurements of the machine (wall
  clock, memory) that differ between otherwise identical runs; every other value is deterministic.
* ``tensorboard/`` with hyper-parameter ``tensorboard``: the train and val records' numbers as
  TensorBoard scalars (``TensorBoardScalars``), step = iterations done.

Replacing another run (``start(replaces=True)``: ``--force``, ``--auto-resume`` after a config
change, or a rerun after a crash before the first checkpoint): the folder's files stay the old
run's until the new run has written its first latest.pth; its log records (and their TensorBoard
scalars) wait in memory until then, so a run stopped before reports its error on stderr only.
Then, in this order: the new config.json (written atomically, as every file here), the old
tensorboard/ removed, log.jsonl replaced by the held records, the old best.pth and epochs.csv
removed (the new run writes its own at its first epoch end). A crash at any point leaves latest.pth
(the old run's or the new one), and what else it leaves either belongs to that checkpoint or is
told apart by a later start: config.json is compared with latest.pth's recorded config
(``msg3d.engine.run_dir``), a resume rebuilds best.pth, epochs.csv and a foreign log.jsonl from
latest.pth, and ``finished_summary`` checks them before it reports a finished run.
"""

import csv
import datetime
import hashlib
import importlib
import json
import random
import secrets
import shutil
from pathlib import Path

import numpy as np
import torch

import msg3d
from msg3d.checkpoint import load_checkpoint, read_checkpoint, save_checkpoint
from msg3d.engine import distributed as distmod
from msg3d.engine.run_dir import TENSORBOARD_DIR, config_differences
from msg3d.fileio import write_csv_atomic, write_json_atomic, write_text_atomic

EPOCH_COLUMNS = ["epoch", "lr", "train_loss", "train_top1", "val_top1", "val_top5", "seconds", "samples_per_s"]
# log.jsonl fields measured on the machine (wall clock, memory): they differ between identical runs
MEASURED_KEYS = frozenset({"time", "iter_time", "data_time", "samples_per_s", "memory_mb", "eta_s"})


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


def weights_sha256(state_dict):
    """sha256 over a state_dict's names and bytes, in its order (for comparing ranks and runs)."""
    h = hashlib.sha256()
    for name, tensor in state_dict.items():
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def require_tensorboard():
    """ValueError saying how to install it when ``torch.utils.tensorboard`` cannot be imported
    (it needs the ``tensorboard`` package, this project's ``tensorboard`` extra)."""
    try:
        importlib.import_module("torch.utils.tensorboard")
    except ImportError as exc:
        raise ValueError(
            "TensorBoard logging was asked for (hyper-parameter 'tensorboard' / --tensorboard) but the tensorboard "
            f"package is not installed ({exc}); install it with: pip install -e '.[tensorboard]' "
            "(or pip install 'tensorboard>=2.14'), or leave TensorBoard off"
        ) from None


class TensorBoardScalars:
    """The numbers of ``train`` and ``val`` records as TensorBoard scalars in ``log_dir``, step =
    ``iter``. ``purge_step``: on resume, the iteration after the checkpoint, so that TensorBoard hides
    what the interrupted process logged past it (``SummaryWriter``'s purge_step)."""

    TAGS = {
        "train": {"loss": "train/loss", "top1": "train/top1", "lr": "train/lr", "iter_time": "time/iter_s",
                  "data_time": "time/data_s", "samples_per_s": "time/samples_per_s",
                  "memory_mb": "memory/peak_mb"},
        "val": {"top1": "val/top1", "top5": "val/top5", "mean_class_accuracy": "val/mean_class_accuracy"},
    }

    def __init__(self, log_dir, purge_step=None):
        self.log_dir = Path(log_dir)
        self.purge_step = purge_step
        self.writer = None  # opened at the first record: a run that never logs leaves no folder

    def add(self, records):
        records = [r for r in records if r["type"] in self.TAGS]
        if not records:
            return
        if self.writer is None:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(self.log_dir), purge_step=self.purge_step)
        for record in records:
            for key, tag in self.TAGS[record["type"]].items():
                if record.get(key) is not None:
                    self.writer.add_scalar(tag, record[key], global_step=record["iter"])
        self.writer.flush()  # a log line's numbers are on disk when the line is

    def close(self):
        if self.writer is not None:
            self.writer.close()
            self.writer = None


class RunLog:
    """Appends JSON lines to RUN_DIR/log.jsonl (rank 0; a no-op on other ranks), and their numbers to
    ``tensorboard`` (a ``TensorBoardScalars`` or None). While ``hold()`` is in effect the records
    wait in memory; ``release()`` makes them the whole log."""

    def __init__(self, path, enabled, tensorboard=None):
        self.path = Path(path)
        self.enabled = enabled
        self.tensorboard = tensorboard
        self.pending = None

    def write(self, **record):
        if not self.enabled:
            return
        record["time"] = datetime.datetime.now().isoformat(timespec="seconds")
        if self.pending is not None:
            self.pending.append(record)
            return
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record, sort_keys=True) + "\n")
        if self.tensorboard is not None:
            self.tensorboard.add([record])

    def hold(self):
        if self.enabled:
            self.pending = []

    def release(self):
        """Replace log.jsonl by the held records, then append as usual."""
        if not self.enabled or self.pending is None:
            return
        records, self.pending = self.pending, None
        write_text_atomic(self.path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in records))
        if self.tensorboard is not None:
            self.tensorboard.add(records)

    def truncate_after(self, iteration, run_id):
        """Before resuming run ``run_id`` at ``iteration``: drop lines past it (and any torn line). A
        log of another run, or none, is restarted with a ``start`` record at ``iteration``."""
        if not self.enabled:
            return
        lines = self.path.read_text(encoding="utf-8").splitlines() if self.path.exists() else []
        kept = []
        for line in lines:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if not kept and (record.get("type") != "start" or record.get("run") != run_id):
                break  # the first line names the run the log belongs to
            if record.get("iter", 0) <= iteration:
                kept.append(line + "\n")
        write_text_atomic(self.path, "".join(kept))
        if not kept:
            self.write(type="start", iter=iteration, run=run_id,
                       note="log.jsonl was missing or another run's: restarted at the resume")

    def close(self):
        if self.tensorboard is not None:
            self.tensorboard.close()


def _epoch_fields(history):
    """epochs.csv's rows as text (floats with repr: exact)."""
    return [[repr(v) if isinstance(v, float) else str(v) for v in (row[c] for c in EPOCH_COLUMNS)]
            for row in history]


class CheckpointSaver:
    """Owns config.json, latest.pth, best.pth (and its in-memory copy), epochs.csv, log.jsonl and
    tensorboard/ of one run.

    ``core`` is the unwrapped model (no DDP / compile wrapper); ``new_model()`` builds a fresh one
    of the same shape (to rewrite best.pth on resume). Every rank calls ``save_latest`` and
    ``end_epoch`` (the RNG states are gathered); only rank 0 writes. Call ``start`` or ``resume``
    first, ``close`` last.
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
        self.tensorboard_dir = self.out / TENSORBOARD_DIR
        self.log = RunLog(self.out / "log.jsonl", self.main)
        self.best_checkpoint = None  # best.pth's meta and CPU weights (rank 0)
        self.latest_iter = None  # iteration of the last latest.pth written or resumed from
        self.run_id = None
        self.replacing = False  # another run's files are still in RUN_DIR (until the first checkpoint)

    def _meta(self, state, **more):
        return {"epoch": state.epoch, "iter": state.global_iter, "config": self.config, "seed": self.config["seed"],
                "msg3d_version": msg3d.__version__, "torch_version": str(torch.__version__), **more}

    def _open_tensorboard(self, purge_step=None):
        if self.main and self.config["hparams"].get("tensorboard"):
            self.log.tensorboard = TensorBoardScalars(self.tensorboard_dir, purge_step)

    def start(self, replaces):
        """Begin a new run. ``replaces``: RUN_DIR holds another run's files, which stay until this
        run's first checkpoint (see the module docstring); otherwise config.json is written now."""
        self.run_id = secrets.token_hex(8)
        self.replacing = replaces and self.main
        if self.replacing:
            self.log.hold()
        elif self.main:
            write_json_atomic(self.out / "config.json", self.config)
        self._open_tensorboard()
        self.log.write(type="start", iter=0, run=self.run_id)

    def resume(self, path, state):
        """Load weights, optimizer, schedule, ``state`` and this rank's RNG from latest.pth ``path``;
        rebuild config.json, epochs.csv, best.pth and (if another run's) log.jsonl from it. Returns
        the checkpoint's meta.

        ValueError when ``path`` holds no resume state, was trained with another seed or by another
        number of processes.
        """
        extra = load_checkpoint(self.core, path)
        train_state = extra.get("train_state")
        if train_state is None or "optimizer" not in extra:
            raise ValueError(f"{path} has no resume state (not a latest.pth written by msg3d train)")
        meta = extra.get("meta", {})
        trained_seed, run_seed = meta.get("seed"), self.config["seed"]
        if trained_seed != run_seed:  # the config comparison refuses this first; a last guard
            raise ValueError(f"{path} was trained with seed {trained_seed}, this run has seed {run_seed}")
        if train_state["world_size"] != self.dist_info.world_size:
            raise ValueError(f"{path} was written by {train_state['world_size']} processes; resume with the same "
                             f"number (now {self.dist_info.world_size})")
        self.optimizer.load_state_dict(extra["optimizer"])
        self.schedule.load_state_dict(extra["scheduler"])
        state.load_state_dict(train_state, source=path)
        restore_rng(train_state["rng"][self.dist_info.rank], self.device)
        self.latest_iter = state.global_iter
        self.run_id = meta.get("run_id")
        self._open_tensorboard(purge_step=state.global_iter + 1)
        self.log.truncate_after(state.global_iter, self.run_id)
        self.log.write(type="resume", iter=state.global_iter, epoch=state.epoch + 1, checkpoint=str(path))
        if self.main:
            # only now that the checkpoint loaded: a refused resume leaves config.json as it was
            write_json_atomic(self.out / "config.json", self.config)
            self.write_epochs(state.history)
            self.best_checkpoint = extra.get("best_checkpoint")
            self._write_best()
        return meta

    def _write_best(self):
        """best.pth from the in-memory copy; none before the first epoch ends (a file there is another run's)."""
        if self.best_checkpoint is None:
            (self.out / "best.pth").unlink(missing_ok=True)
            return
        with torch.random.fork_rng(devices=[]):  # its random initial weights must not move the run's RNG
            best_model = self.new_model()
        load_checkpoint(best_model, self.best_checkpoint["state_dict"])
        save_checkpoint(self.out / "best.pth", best_model, meta=self.best_checkpoint["meta"])

    def save_latest(self, state):
        """Write latest.pth with everything a resume at ``state`` needs (collective: every rank); the
        first one of a run that replaces another then replaces that run's other files."""
        rng = distmod.all_gather_objects(self.dist_info, capture_rng(self.device))
        self.latest_iter = state.global_iter  # every rank names the same checkpoint in its errors
        if not self.main:
            return
        batch_size = self.config["hparams"]["batch_size"]
        resume_state = dict(state.state_dict(), rng=rng, world_size=self.dist_info.world_size,
                            sampler={"seed": self.config["seed"], "epoch": state.epoch,
                                     "start": state.iter_in_epoch * batch_size})
        save_checkpoint(self.out / "latest.pth", self.core, optimizer=self.optimizer,
                        meta=self._meta(state, torch_threads=torch.get_num_threads(), run_id=self.run_id),
                        scheduler=self.schedule.state_dict(), best_checkpoint=self.best_checkpoint,
                        train_state=resume_state)
        if self.replacing:
            self._take_over()
        self.log.write(type="checkpoint", file="latest.pth", iter=state.global_iter)

    def _take_over(self):
        """After the first latest.pth of a run that replaces another: the other files become this run's."""
        self.replacing = False
        write_json_atomic(self.out / "config.json", self.config)
        shutil.rmtree(self.tensorboard_dir, ignore_errors=True)
        self.log.release()
        # the old run's; this run's are written by end_epoch right after, if this checkpoint ends an epoch
        for name in ("best.pth", "epochs.csv"):
            (self.out / name).unlink(missing_ok=True)

    def last_good_checkpoint(self):
        """How a failure message names the checkpoint a rerun would resume from."""
        latest = self.out / "latest.pth"
        if self.latest_iter is None or not latest.exists():
            return "none written yet"
        return f"{latest} (iteration {self.latest_iter})"

    def end_epoch(self, state, row, val, improved):
        """After ``state.finish_epoch(row)`` (which says whether the epoch ``improved`` on the best val
        top-1): log the validation, then write latest.pth, best.pth if it improved, and epochs.csv
        (collective: every rank). latest.pth comes first: it holds best.pth's copy, so a crash in
        between leaves nothing a resume does not rebuild."""
        self.log.write(type="val", epoch=row["epoch"], iter=state.global_iter, top1=row["val_top1"],
                       top5=row["val_top5"], mean_class_accuracy=val and val["mean_class_accuracy"])
        if improved and self.main:
            meta = self._meta(state, epoch=row["epoch"], val_top1=row["val_top1"], val_top5=row["val_top5"])
            self.best_checkpoint = {"meta": meta, "state_dict": {k: v.detach().to("cpu", copy=True)
                                                                 for k, v in self.core.state_dict().items()}}
            self.log.write(type="best", file="best.pth", iter=state.global_iter, epoch=row["epoch"],
                           top1=row["val_top1"])
        self.save_latest(state)
        if self.main:
            if improved:
                save_checkpoint(self.out / "best.pth", self.core, meta=self.best_checkpoint["meta"])
            self.write_epochs(state.history)

    def write_epochs(self, history):
        """epochs.csv from the rows of the finished epochs."""
        write_csv_atomic(self.out / "epochs.csv", EPOCH_COLUMNS, _epoch_fields(history))

    def close(self):
        self.log.close()


def finished_summary(out, latest, max_iters):
    """If checkpoint ``latest`` ended its run (``max_iters`` iterations done) and RUN_DIR ``out``
    holds that run's config.json, epochs.csv and best.pth unchanged, what ``msg3d train`` reports
    for it: ``{epoch, iter, epochs, best, final_weights_sha256}``; else None (a run to continue, or
    records to rebuild by resuming)."""
    state_dict, entries, _ = read_checkpoint(latest)
    meta, train_state = entries.get("meta", {}), entries.get("train_state")
    if meta.get("iter") != max_iters or not isinstance(train_state, dict):
        return None
    if not _records_match(Path(out), meta["config"], train_state["history"], entries.get("best_checkpoint")):
        return None
    return {"epoch": meta["epoch"], "iter": meta["iter"], "epochs": train_state["history"],
            "best": train_state["best"], "final_weights_sha256": weights_sha256(state_dict)}


def _records_match(out, config, history, best_checkpoint):
    """Whether config.json, epochs.csv and best.pth in ``out`` are the ones these values give."""
    try:
        recorded = json.loads((out / "config.json").read_text(encoding="utf-8"))
        with open(out / "epochs.csv", newline="", encoding="utf-8") as f:
            rows = list(csv.reader(f))
        best_meta = read_checkpoint(out / "best.pth")[1].get("meta") if best_checkpoint is not None else None
    except (OSError, ValueError):  # missing, unreadable: Snakemake deletes a job's outputs before a rerun
        return False
    return (isinstance(recorded, dict) and not config_differences(recorded, config)
            and rows == [EPOCH_COLUMNS, *_epoch_fields(history)]
            and (best_checkpoint is None or best_meta == best_checkpoint["meta"]))
