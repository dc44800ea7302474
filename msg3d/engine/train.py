"""``msg3d train``: PYSKL's MS-G3D training recipe with exact resume, determinism, bf16 and DDP.

Writes into RUN_DIR (rank 0 only):
* ``config.json``  the resolved config: hyper-parameters, seed, data store + meta, split, runtime
  (device, amp, compile, world size), derived numbers (lr used, iterations) and ``code_digest``
  (``msg3d.provenance``: the same value the workflow's train rule tracks), so that a run is never
  continued by different training code.
* ``latest.pth``   PYSKL-format checkpoint (``meta``, ``state_dict``, ``optimizer``) plus our resume
  state (``scheduler``, ``train_state``: epoch, iteration, sampler position, RNG states of every
  rank, running epoch sums, history, best; ``best_checkpoint``: a copy of best.pth's contents);
  written at every epoch end and every ``checkpoint_interval`` iterations.
* ``best.pth``     weights of the epoch with the highest val top-1 (first one on ties).
* ``epochs.csv``   epoch, lr (at the epoch's first iteration), train_loss, train_top1, val_top1,
  val_top5, seconds (wall time of the epoch incl. validation), samples_per_s (training only).
* ``log.jsonl``    one JSON object per line: ``train`` every ``log_interval`` iterations, ``val``,
  ``checkpoint``, ``best``, ``resume`` and ``error`` events; every line has ``iter`` (iterations
  done).

Determinism: the training order depends only on (seed, epoch) and each item's sampling on (seed,
epoch, item), never on the number of data workers; on CPU deterministic algorithms are on, so the
same config and seed give identical weights and epochs.csv (timing columns aside), given the same
number of CPU threads (kernels sum in thread-dependent order). Without ``--seed`` a new run gets a
random seed, and a rerun in the same RUN_DIR reuses the recorded one.

Resume: ``--resume`` reloads ``latest.pth`` and continues at the exact iteration, skipping the
batches of the epoch's order that were already consumed, so the final weights and epochs.csv equal
an uninterrupted run's. Everything else in RUN_DIR is rebuilt from ``latest.pth`` (epochs.csv from
the history, best.pth from its copy), so a resume also works after those files were deleted, as
Snakemake deletes a job's declared outputs before rerunning it. Without ``--resume`` an existing
RUN_DIR with the same config starts over; one with a different config is refused unless ``--force``.
``--auto-resume`` (PYSKL's auto-resume, for Snakemake): resume if ``latest.pth`` exists and
``config.json`` equals the new config, code digest included; otherwise start over as ``--force``
would, saying why on stderr.

DDP (``torchrun``): one process per GPU (gloo on CPU), each with ``batch_size`` samples; BN
statistics are per process as in PYSKL, and rank 0's are adopted by all ranks before validating
(so every rank validates, and rank 0 saves, the same model); validation is sharded and gathered.
"""

import csv
import datetime
import hashlib
import io
import json
import math
import random
import secrets
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

import msg3d
from msg3d.data.store import open_store
from msg3d.engine import distributed as distmod
from msg3d.engine.evaluate import autocast, predict_all_ranks
from msg3d.engine.hparams import load_hparams, resolve_hparams, scaled_lr
from msg3d.engine.loader import eval_loader, iterations_per_epoch, train_loader
from msg3d.engine.progress import Progress
from msg3d.engine.schedule import CosineSchedule, build_optimizer
from msg3d.fileio import write_json_atomic, write_text_atomic
from msg3d.metrics import mean_class_accuracy, top_k_accuracy
from msg3d.provenance import code_digest

EPOCH_COLUMNS = ["epoch", "lr", "train_loss", "train_top1", "val_top1", "val_top5", "seconds", "samples_per_s"]
TIMING_COLUMNS = ("seconds", "samples_per_s")


class NonFiniteLossError(ValueError):
    """The training loss became NaN or infinite (a ValueError, so the CLI reports it as an error)."""


# --------------------------------------------------------------------------- data & config


def resolve_device(name=None):
    """``None`` -> CUDA when available, else CPU. Asking for CUDA without one is an error."""
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name not in ("cpu", "cuda"):
        raise ValueError(f"unknown device {name!r}; use 'cpu' or 'cuda'")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda was requested but no CUDA device is available")
    return torch.device(name)


def split_pair(store, store_dir, split):
    """``(NAME_train, NAME_val)`` for ``--split NAME``, or a ValueError listing the available pairs."""
    names = set(store.splits)
    train, val = f"{split}_train", f"{split}_val"
    if train in names and val in names:
        return train, val
    pairs = sorted(n[: -len("_train")] for n in names if n.endswith("_train") and n[: -len("_train")] + "_val" in names)
    raise ValueError(
        f"split {split!r} needs {train!r} and {val!r} in store {store_dir}; "
        f"available split names: {', '.join(pairs) or '(none)'} (store splits: {', '.join(sorted(names))})"
    )


def _jsonable(obj):
    """JSON round trip (tuples become lists), so a config compares equal to its reloaded config.json."""
    return json.loads(json.dumps(obj, sort_keys=True))


def config_differences(old, new, prefix=""):
    """Dotted keys whose values differ between two config dicts."""
    diffs = []
    for key in sorted(set(old) | set(new)):
        name = f"{prefix}{key}"
        a, b = old.get(key, "<absent>"), new.get(key, "<absent>")
        if isinstance(a, dict) and isinstance(b, dict):
            diffs += config_differences(a, b, name + ".")
        elif a != b:
            diffs.append(f"{name}: {a!r} -> {b!r}")
    return diffs


def make_config(hp, seed, store_dir, store, split, train_split, val_split, n_train, n_val, device, amp,
                compile_model, world_size, iters_per_epoch):
    return _jsonable(
        {
            "hparams": hp,
            "seed": seed,
            "code_digest": code_digest(__name__),
            "data": {
                "store": str(Path(store_dir).resolve()),
                "meta": store.meta,
                "split": split,
                "train_split": train_split,
                "val_split": val_split,
                "num_train_samples": n_train,
                "num_val_samples": n_val,
            },
            "runtime": {"device": device.type, "amp": amp, "compile": bool(compile_model), "world_size": world_size},
            "derived": {
                "lr_used": scaled_lr(hp, world_size),
                "global_batch": hp["batch_size"] * world_size,
                "iters_per_epoch": iters_per_epoch,
                "max_iters": iters_per_epoch * hp["epochs"],
            },
        }
    )


RUN_FILES = ("latest.pth", "best.pth", "epochs.csv", "log.jsonl")


def prepare_run_dir(out, config, *, seed_given, resume, force, auto_resume=False):
    """Check RUN_DIR against ``config`` and decide what to do (rank 0 only).

    Returns ``(config, resume_from)``: the config to use (with the recorded seed when ``--seed``
    was not given and the rest matches) and the checkpoint to resume from, or None to start fresh.
    With ``auto_resume`` it never refuses, and says on stderr which it chose and why.
    """
    out = Path(out)
    config_path = out / "config.json"
    latest = out / "latest.pth"
    old = None
    if config_path.exists():
        try:
            old = json.loads(config_path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            if not (force or auto_resume):
                raise ValueError(f"{config_path} is not valid JSON ({exc}); use --force to start over") from None
    if old is not None and not seed_given and "seed" in old:
        # no --seed: a rerun in the same folder reuses the recorded seed, so it reproduces that run
        config = dict(config, seed=old["seed"])
    if auto_resume:
        if not latest.exists():
            why = f"no checkpoint {latest}"
        elif old is None:
            why = f"no readable {config_path} to compare the config with"
        else:
            diffs = config_differences(old, config)
            if not diffs:
                print(f"msg3d train: --auto-resume: {latest} has the same config; resuming", file=sys.stderr)
                return config, latest
            why = f"config differs from {config_path}: " + "; ".join(diffs)
        print(f"msg3d train: --auto-resume: {why}; starting fresh", file=sys.stderr)
        return config, None
    if resume:
        if not latest.exists():
            raise FileNotFoundError(f"--resume: no checkpoint {latest} to resume from")
        if old is not None:
            diffs = config_differences(old, config)
            if diffs and not force:
                raise ValueError(
                    f"--resume: the config differs from {config_path}:\n  " + "\n  ".join(diffs)
                    + "\nresume with the same settings, or add --force to resume anyway"
                )
        return config, latest
    if old is not None and not force:
        diffs = config_differences(old, config)
        if diffs:
            raise ValueError(
                f"{out} holds a run with a different config ({config_path}):\n  " + "\n  ".join(diffs)
                + "\nuse another --out, --resume with the same settings, or --force to overwrite it"
            )
    return config, None


# --------------------------------------------------------------------------- RNG state


def capture_rng(device):
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
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(
        (n["bit_generator"], n["key"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"])
    )
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


# --------------------------------------------------------------------------- outputs


def epochs_csv_text(history):
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=EPOCH_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in history:
        writer.writerow({k: repr(v) if isinstance(v, float) else v for k, v in row.items()})
    return buf.getvalue()


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


def state_checksum(model):
    """sha256 over the state_dict's names and bytes (for comparing ranks and runs)."""
    h = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


# --------------------------------------------------------------------------- training


def train(data, split, out, hparams=None, *, resume=False, auto_resume=False, force=False, seed=None, device=None,
          amp=None, compile_model=False, progress_seconds=10.0):
    """Train on ``SPLIT_train`` of store ``data``, validating on ``SPLIT_val``; returns a summary dict.

    ``hparams``: a resolved dict (``load_hparams``) or overrides for ``resolve_hparams``.
    """
    if auto_resume and (resume or force):
        raise ValueError("--auto-resume decides by itself between resuming and starting over: "
                         "do not combine it with --resume or --force")
    hp = resolve_hparams(hparams)
    device = resolve_device(device)
    if amp is not None and amp != "bf16":
        raise ValueError(f"unsupported --amp {amp!r}; only 'bf16' is supported")
    info = distmod.init_distributed(device.type)
    if device.type == "cuda":
        device = torch.device("cuda", info.local_rank)
    previous_deterministic = torch.are_deterministic_algorithms_enabled()
    try:
        if device.type == "cpu":
            torch.use_deterministic_algorithms(True)
        else:
            torch.backends.cudnn.benchmark = True
        return _train(data, split, Path(out), hp, info, resume, auto_resume, force, seed, device, amp,
                      compile_model, progress_seconds)
    finally:
        torch.use_deterministic_algorithms(previous_deterministic)
        distmod.shutdown(info)


def _setup_run(data, split, out, hp, info, resume, auto_resume, force, seed, device, amp, compile_model):
    """Open data, build the config and decide fresh/resume on rank 0; every rank gets the outcome."""
    from msg3d.data.dataset import SkeletonDataset

    store = open_store(data)
    train_split, val_split = split_pair(store, data, split)
    decision = None
    if info.is_main:
        try:
            n_train = len(store.splits[train_split])
            n_val = len(store.splits[val_split])
            iters_per_epoch = iterations_per_epoch(n_train * hp["repeat"], info.world_size, hp["batch_size"])
            chosen_seed = seed if seed is not None else secrets.randbelow(2**31)
            config = make_config(hp, chosen_seed, data, store, split, train_split, val_split, n_train, n_val,
                                 device, amp, compile_model, info.world_size, iters_per_epoch)
            config, resume_from = prepare_run_dir(out, config, seed_given=seed is not None, resume=resume,
                                                  force=force, auto_resume=auto_resume)
            decision = {"config": config, "resume_from": str(resume_from) if resume_from else None}
        except (ValueError, FileNotFoundError) as exc:
            decision = {"error": exc}
    decision = distmod.broadcast_object(info, decision)
    if "error" in decision:
        raise decision["error"]
    config = decision["config"]
    run_seed = config["seed"]
    train_ds = SkeletonDataset(data, train_split, clip_len=hp["clip_len"], num_clips=1, test_mode=False,
                               seed=run_seed, repeat=hp["repeat"])
    val_ds = SkeletonDataset(data, val_split, clip_len=hp["clip_len"], num_clips=hp["val_clips"], test_mode=True)
    return store, config, decision["resume_from"], train_ds, val_ds


def _train(data, split, out, hp, info, resume, auto_resume, force, seed, device, amp, compile_model,
           progress_seconds):
    from msg3d.checkpoint import load_checkpoint, save_checkpoint
    from msg3d.models import build_model

    store, config, resume_from, train_ds, val_ds = _setup_run(data, split, out, hp, info, resume, auto_resume,
                                                              force, seed, device, amp, compile_model)
    run_seed = config["seed"]
    main = info.is_main
    log = RunLog(out / "log.jsonl", main)
    say = (lambda msg: print(f"msg3d train: {msg}", file=sys.stderr, flush=True)) if main else (lambda msg: None)

    if main:
        out.mkdir(parents=True, exist_ok=True)
        for name in ("config.json", *RUN_FILES):
            # temporaries of atomic writes that a killed run could not clean up
            for stale in out.glob(f".{name}.tmp-*"):
                stale.unlink()
        if resume_from is None:
            for name in RUN_FILES:
                (out / name).unlink(missing_ok=True)
            write_json_atomic(out / "config.json", config)

    # Same seed on every rank: identical initial weights (DDP also broadcasts rank 0's).
    random.seed(run_seed)
    np.random.seed(run_seed)
    torch.manual_seed(run_seed)
    meta = store.meta

    def new_model():
        return build_model(meta["num_classes"], layout=meta["layout"], in_channels=meta["channels"], **hp["model"])

    core = new_model().to(device)
    optimizer = build_optimizer(core, scaled_lr(hp, info.world_size), hp["momentum"], hp["nesterov"],
                                hp["weight_decay"])
    pin = device.type == "cuda"
    loader = train_loader(train_ds, hp["batch_size"], hp["num_workers"], info, run_seed, pin)
    sampler = loader.sampler
    val_load = eval_loader(val_ds, hp["batch_size"], hp["num_workers"], info, run_seed, pin)
    iters_per_epoch = config["derived"]["iters_per_epoch"]
    max_iters = config["derived"]["max_iters"]
    schedule = CosineSchedule(optimizer, scaled_lr(hp, info.world_size), max_iters)

    state = {
        "epoch": 0,  # current epoch (0-based)
        "iter_in_epoch": 0,  # batches of it already done
        "global_iter": 0,
        "epoch_sums": [0.0, 0.0, 0.0],  # loss·n, correct, n (all ranks)
        "epoch_seconds": 0.0,
        "epoch_train_seconds": 0.0,
        "interval": [0.0, 0.0, 0.0, 0],  # the same since the last log line, + iterations
        "history": [],
        "best": {"top1": None, "epoch": None},
    }
    # best.pth's contents (meta and CPU weights), also kept in latest.pth: a resume rewrites best.pth
    # from it, so best.pth is right even if it was deleted (rank 0 only)
    best_checkpoint = None
    if resume_from is not None:
        extra = load_checkpoint(core, resume_from)
        train_state = extra.get("train_state")
        if train_state is None or "optimizer" not in extra:
            raise ValueError(f"{resume_from} has no resume state (not a latest.pth written by msg3d train)")
        trained_seed = extra.get("meta", {}).get("seed")
        if trained_seed not in (None, run_seed) and not force:
            # only reachable without a usable config.json (otherwise the config check refused it)
            raise ValueError(f"{resume_from} was trained with seed {trained_seed}, this run has seed {run_seed}; "
                             f"resume with --seed {trained_seed} (or --force to continue with the new seed)")
        if train_state["world_size"] != info.world_size:
            raise ValueError(
                f"{resume_from} was written by {train_state['world_size']} processes; resume with the same number "
                f"(now {info.world_size})"
            )
        optimizer.load_state_dict(extra["optimizer"])
        schedule.load_state_dict(extra["scheduler"])
        for key in state:
            state[key] = train_state[key]
        restore_rng(train_state["rng"][info.rank], device)
        log.truncate_after(state["global_iter"])
        log.write(type="resume", iter=state["global_iter"], epoch=state["epoch"] + 1, checkpoint=str(resume_from))
        if main:
            # only now that the checkpoint fits: a refused --force resume leaves config.json as it was
            write_json_atomic(out / "config.json", config)
            write_text_atomic(out / "epochs.csv", epochs_csv_text(state["history"]))
            best_checkpoint = extra.get("best_checkpoint")
            if best_checkpoint is not None:
                with torch.random.fork_rng(devices=[]):  # its random initial weights must not move the run's RNG
                    best_model = new_model()
                load_checkpoint(best_model, best_checkpoint["state_dict"])
                save_checkpoint(out / "best.pth", best_model, meta=best_checkpoint["meta"])
        say(f"resuming from {resume_from} at iteration {state['global_iter']}/{max_iters} "
            f"(epoch {state['epoch'] + 1}, batch {state['iter_in_epoch']})")
        threads = extra.get("meta", {}).get("torch_threads")
        if device.type == "cpu" and threads not in (None, torch.get_num_threads()):
            say(f"note: the checkpoint was written with {threads} CPU threads, this process uses "
                f"{torch.get_num_threads()}; CPU results are bit-identical only with equal thread counts")

    model = core
    if compile_model:
        core.compile()
    if info.enabled:
        # BN statistics stay per process, as PYSKL (broadcast_buffers=False); see sync_buffers
        model = torch.nn.parallel.DistributedDataParallel(
            core, device_ids=[device.index] if device.type == "cuda" else None, broadcast_buffers=False
        )

    def save_latest():
        rng = distmod.all_gather_objects(info, capture_rng(device))
        if not main:
            return
        meta_out = {
            "epoch": state["epoch"],
            "iter": state["global_iter"],
            "config": config,
            "seed": run_seed,
            "msg3d_version": msg3d.__version__,
            "torch_version": str(torch.__version__),
            "torch_threads": torch.get_num_threads(),
        }
        save_checkpoint(out / "latest.pth", core, optimizer=optimizer, meta=meta_out,
                        scheduler=schedule.state_dict(), best_checkpoint=best_checkpoint,
                        train_state=dict(state, rng=rng, world_size=info.world_size,
                                         sampler={"seed": run_seed, "epoch": state["epoch"],
                                                  "start": state["iter_in_epoch"] * hp["batch_size"]}))
        log.write(type="checkpoint", file="latest.pth", iter=state["global_iter"])

    progress = Progress(max_iters, state["global_iter"], min_seconds=progress_seconds, enabled=main)
    say(f"{config['data']['num_train_samples']} train / {config['data']['num_val_samples']} val samples, "
        f"{iters_per_epoch} iterations/epoch x {hp['epochs']} epochs, lr {scaled_lr(hp, info.world_size):g}, "
        f"device {device}, world size {info.world_size}, seed {run_seed}")

    model.train()
    while state["epoch"] < hp["epochs"]:
        epoch = state["epoch"]
        sampler.set_position(epoch, state["iter_in_epoch"] * hp["batch_size"])
        train_ds.set_epoch(epoch)
        t_epoch = time.perf_counter() - state["epoch_seconds"]
        t_train = time.perf_counter() - state["epoch_train_seconds"]
        for keypoint, label in loader:
            it = state["global_iter"]
            lr = schedule.apply(it)
            keypoint = keypoint[:, 0].to(device, non_blocking=True)
            label = label.to(device, non_blocking=True)
            with autocast(device, amp):
                logits = model(keypoint)
            loss = F.cross_entropy(logits.float(), label)
            loss.backward()
            n = label.new_tensor(label.shape[0], dtype=torch.float64)
            stats = torch.stack([loss.detach().double() * n, (logits.argmax(1) == label).sum().double(), n])
            loss_sum, correct, count = distmod.all_reduce_sum(info, stats).tolist()
            if not math.isfinite(loss_sum):
                latest = out / "latest.pth"
                last_good = f"{latest} (iteration {state['global_iter']})" if latest.exists() else "none written yet"
                msg = (f"non-finite training loss ({loss_sum / count}) at iteration {it + 1} (epoch {epoch + 1}, "
                       f"batch {state['iter_in_epoch'] + 1}); stopped without saving; last good checkpoint: "
                       f"{last_good}")
                log.write(type="error", iter=it, message=msg)
                raise NonFiniteLossError(msg)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            state["global_iter"] += 1
            state["iter_in_epoch"] += 1
            for i, v in enumerate((loss_sum, correct, count)):
                state["epoch_sums"][i] += v
                state["interval"][i] += v
            state["interval"][3] += 1
            done = state["global_iter"]
            text = f"epoch {epoch + 1}/{hp['epochs']} loss {loss_sum / count:.4f} lr {lr:.3g}"
            if done % hp["log_interval"] == 0:
                s = state["interval"]
                log.write(type="train", epoch=epoch + 1, iter=done, lr=lr, loss=s[0] / s[2], top1=s[1] / s[2],
                          iters=s[3])
                state["interval"] = [0.0, 0.0, 0.0, 0]
                progress.update(done, text, force=True)
            else:
                progress.update(done, text)
            if (hp["checkpoint_interval"] and done % hp["checkpoint_interval"] == 0
                    and state["iter_in_epoch"] < iters_per_epoch):
                state["epoch_seconds"] = time.perf_counter() - t_epoch
                state["epoch_train_seconds"] = time.perf_counter() - t_train
                save_latest()
        train_seconds = time.perf_counter() - t_train

        distmod.sync_buffers(info, core)
        probs = predict_all_ranks(core, val_load, device, info, len(val_ds), amp)
        row = None
        if main:
            labels = np.asarray(val_ds.labels)
            val_top1, val_top5 = top_k_accuracy(probs, labels, (1, 5))
            mca = mean_class_accuracy(probs, labels)
            loss_sum, correct, count = state["epoch_sums"]
            row = {
                "epoch": epoch + 1,
                "lr": schedule.lr_at(epoch * iters_per_epoch),
                "train_loss": loss_sum / count,
                "train_top1": correct / count,
                "val_top1": val_top1,
                "val_top5": val_top5,
                "seconds": time.perf_counter() - t_epoch,
                "samples_per_s": count / train_seconds,
            }
            log.write(type="val", epoch=epoch + 1, iter=state["global_iter"], top1=val_top1, top5=val_top5,
                      mean_class_accuracy=mca)
            say(f"epoch {epoch + 1}/{hp['epochs']}: train loss {row['train_loss']:.4f} top1 {row['train_top1']:.4f}"
                f" | val top1 {val_top1:.4f} top5 {val_top5:.4f} | {row['seconds']:.1f} s")
        row = distmod.broadcast_object(info, row)
        state["history"].append(row)
        state["epoch"] += 1
        state["iter_in_epoch"] = 0
        state["epoch_sums"] = [0.0, 0.0, 0.0]
        state["epoch_seconds"] = state["epoch_train_seconds"] = 0.0
        best = state["best"]
        if best["top1"] is None or row["val_top1"] > best["top1"]:
            state["best"] = {"top1": row["val_top1"], "epoch": row["epoch"]}
            if main:
                best_meta = {"epoch": row["epoch"], "iter": state["global_iter"], "config": config, "seed": run_seed,
                             "val_top1": row["val_top1"], "val_top5": row["val_top5"],
                             "msg3d_version": msg3d.__version__, "torch_version": str(torch.__version__)}
                save_checkpoint(out / "best.pth", core, meta=best_meta)
                best_checkpoint = {"meta": best_meta, "state_dict": {k: v.detach().to("cpu", copy=True)
                                                                     for k, v in core.state_dict().items()}}
                log.write(type="best", file="best.pth", iter=state["global_iter"], epoch=row["epoch"],
                          top1=row["val_top1"])
        save_latest()
        if main:
            write_text_atomic(out / "epochs.csv", epochs_csv_text(state["history"]))

    checksum = state_checksum(core)
    print(f"msg3d train: rank {info.rank} final weights sha256 {checksum}", file=sys.stderr, flush=True)
    return {
        "run_dir": str(out),
        "epochs": state["history"],
        "best": state["best"],
        "final_weights_sha256": checksum,
        "rank": info.rank,
        "world_size": info.world_size,
    }


# --------------------------------------------------------------------------- CLI


def add_arguments(parser):
    parser.add_argument("--data", required=True, help="derived store folder (from `msg3d derive`)")
    parser.add_argument("--split", required=True,
                        help="split pair NAME: trains on NAME_train, validates on NAME_val (e.g. xsub)")
    parser.add_argument("--out", required=True, help="run folder (config.json, latest.pth, best.pth, ...)")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--hparams", metavar="FILE", help="YAML/JSON file of hyper-parameters (over PYSKL defaults)")
    group.add_argument("--hparams-json", metavar="JSON", help="hyper-parameters as a JSON object")
    resume = parser.add_mutually_exclusive_group()
    resume.add_argument("--resume", action="store_true", help="continue from RUN_DIR/latest.pth")
    resume.add_argument("--auto-resume", action="store_true",
                        help="continue from RUN_DIR/latest.pth if RUN_DIR/config.json equals the new config "
                             "(code digest included), else start over (for workflows; says which on stderr)")
    parser.add_argument("--force", action="store_true",
                        help="overwrite a run folder whose config differs (or resume despite differences)")
    parser.add_argument("--seed", type=int, default=None,
                        help="random seed (default: the run folder's recorded seed, else a random one)")
    parser.add_argument("--device", choices=["cpu", "cuda"], default=None, help="default: cuda when available")
    parser.add_argument("--amp", choices=["bf16"], default=None, help="bf16 autocast")
    parser.add_argument("--compile", action="store_true", help="torch.compile the model")
    parser.add_argument("--expect-code-digest", metavar="HEX",
                        help="refuse to start unless the training code's digest (msg3d.provenance) is HEX: the "
                             "workflow passes the digest it tracks, so a stale or foreign msg3d is caught")


def run(args):
    if args.expect_code_digest is not None and args.expect_code_digest != code_digest(__name__):
        raise ValueError(
            f"the training code's digest is {code_digest(__name__)} but {args.expect_code_digest} was expected: "
            f"the msg3d that runs ({Path(__file__).parents[1]}) is not the code the workflow hashed"
        )
    hp = load_hparams(args.hparams, args.hparams_json)
    train(args.data, args.split, args.out, hp, resume=args.resume, auto_resume=args.auto_resume,
          force=args.force, seed=args.seed, device=args.device, amp=args.amp, compile_model=args.compile)
    return 0
