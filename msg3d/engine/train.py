"""``msg3d train``: PYSKL's MS-G3D training recipe with exact resume, determinism, bf16 and DDP.

Writes into RUN_DIR (rank 0 only) ``config.json``: the resolved config (hyper-parameters, seed,
data store + meta, split, runtime: device, amp, compile, world size; derived numbers: lr used,
iterations; and ``code_digest``, ``msg3d.provenance``'s digest of the training code, the value the
workflow's train rule tracks), so that a run is never continued by a different config or code.
The other records (latest.pth, best.pth, epochs.csv, log.jsonl) are ``msg3d.engine.saver``'s; the
fresh/resume/refuse decision and the lock that keeps a second ``msg3d train`` out of RUN_DIR are
``msg3d.engine.run_dir``'s; one epoch and validation are ``msg3d.engine.loop``'s.

Determinism: the training order depends only on (seed, epoch) and each item's sampling on (seed,
epoch, item), never on the number of data workers; on CPU deterministic algorithms are on, so the
same config and seed give identical weights and epochs.csv (timing columns aside), given the same
number of CPU threads (kernels sum in thread-dependent order). Without ``--seed`` a new run gets a
random seed, and a rerun in the same RUN_DIR reuses the recorded one.

Resume: ``--resume`` reloads ``latest.pth`` and continues at the exact iteration, skipping the
batches of the epoch's order that were already consumed, so the final weights and epochs.csv equal
an uninterrupted run's. Everything else in RUN_DIR is rebuilt from ``latest.pth`` (epochs.csv from
the history, best.pth from its copy), so a resume also works after those files were deleted, as
Snakemake deletes a job's declared outputs before rerunning it.

DDP (``torchrun``): one process per GPU (gloo on CPU), each with ``batch_size`` samples; BN
statistics are per process as in PYSKL, and rank 0's are adopted by all ranks before validating
(so every rank validates, and rank 0 saves, the same model); validation is sharded and gathered.
"""

import argparse
import contextlib
import dataclasses
import hashlib
import json
import random
import secrets
import sys
from pathlib import Path

import numpy as np
import torch

from msg3d.data.store import open_store
from msg3d.engine import distributed as distmod
from msg3d.engine.device import check_amp, resolve_device
from msg3d.engine.hparams import hparams_help, load_hparams, resolve_hparams
from msg3d.engine.loader import eval_loader, iterations_per_epoch, train_loader
from msg3d.engine.loop import EpochClock, TrainState, epoch_row, train_one_epoch, validate
from msg3d.engine.progress import Progress
from msg3d.engine.run_dir import RUN_FILES, lock_run_dir, prepare_run_dir
from msg3d.engine.saver import CheckpointSaver
from msg3d.engine.schedule import CosineSchedule, build_optimizer
from msg3d.fileio import write_json_atomic
from msg3d.provenance import code_digest


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


def make_config(hp, seed, store_dir, store, split, train_split, val_split, n_train, n_val, device, amp,
                compile_model, world_size, iters_per_epoch):
    """The run's config.json content (JSON round-tripped, so it compares equal to the file)."""
    return _jsonable(
        {
            "hparams": hp.to_dict(),
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
                "lr_used": hp.scaled_lr(world_size),
                "global_batch": hp.batch_size * world_size,
                "iters_per_epoch": iters_per_epoch,
                "max_iters": iters_per_epoch * hp.epochs,
            },
        }
    )


def state_checksum(model):
    """sha256 over the state_dict's names and bytes (for comparing ranks and runs)."""
    h = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def train(data, split, out, hparams=None, *, resume=False, auto_resume=False, force=False, seed=None, device=None,
          amp=None, compile_model=False, progress_seconds=10.0):
    """Train on ``SPLIT_train`` of store ``data``, validating on ``SPLIT_val``; returns a summary dict.

    ``hparams``: an ``HParams`` or a mapping of overrides of its defaults.
    """
    if seed is not None and not 0 <= seed < 2**32:
        raise ValueError(f"--seed must be in [0, 2**32) (numpy's seed range), got {seed}")
    if auto_resume and (resume or force):
        raise ValueError("--auto-resume decides by itself between resuming and starting over: "
                         "do not combine it with --resume or --force")
    hp = resolve_hparams(hparams)
    device = resolve_device(device)
    check_amp(amp)
    info = distmod.init_distributed(device.type)
    if device.type == "cuda":
        device = torch.device("cuda", info.local_rank)
    previous_deterministic = torch.are_deterministic_algorithms_enabled()
    with contextlib.ExitStack() as run_lock:  # rank 0's lock on RUN_DIR (taken in _decide_run), released last
        try:
            if device.type == "cpu":
                torch.use_deterministic_algorithms(True)
            else:
                torch.backends.cudnn.benchmark = True
            return _train(data, split, Path(out), hp, info, resume, auto_resume, force, seed, device, amp,
                          compile_model, progress_seconds, run_lock)
        finally:
            torch.use_deterministic_algorithms(previous_deterministic)
            distmod.shutdown(info)


def _decide_run(data, split, out, hp, info, resume, auto_resume, force, seed, device, amp, compile_model,
                run_lock):
    """Open the store, lock RUN_DIR (into the ExitStack ``run_lock``), build the config and decide
    fresh/resume on rank 0; every rank gets the outcome, or raises rank 0's error:
    ``(store, config, resume_from or None, train split name, val split name)``."""
    store = open_store(data)
    train_split, val_split = split_pair(store, data, split)
    decision = None
    if info.is_main:
        try:
            run_lock.enter_context(lock_run_dir(out))
            n_train = len(store.splits[train_split])
            n_val = len(store.splits[val_split])
            iters_per_epoch = iterations_per_epoch(n_train * hp.repeat, info.world_size, hp.batch_size)
            chosen_seed = seed if seed is not None else secrets.randbelow(2**31)
            config = make_config(hp, chosen_seed, data, store, split, train_split, val_split, n_train, n_val,
                                 device, amp, compile_model, info.world_size, iters_per_epoch)
            config, resume_from = prepare_run_dir(out, config, seed_given=seed is not None, resume=resume,
                                                  force=force, auto_resume=auto_resume)
            decision = {"config": config, "resume_from": str(resume_from) if resume_from else None}
        except (ValueError, OSError) as exc:  # e.g. the folder in use: every rank must stop, not wait
            decision = {"error": exc}
    decision = distmod.broadcast_object(info, decision)
    if "error" in decision:
        raise decision["error"]
    return store, decision["config"], decision["resume_from"], train_split, val_split


def _train(data, split, out, hp, info, resume, auto_resume, force, seed, device, amp, compile_model,
           progress_seconds, run_lock):
    from msg3d.data.dataset import SkeletonDataset
    from msg3d.models import build_model

    store, config, resume_from, train_split, val_split = _decide_run(
        data, split, out, hp, info, resume, auto_resume, force, seed, device, amp, compile_model, run_lock)
    run_seed = config["seed"]
    train_ds = SkeletonDataset(data, train_split, clip_len=hp.clip_len, num_clips=1, test_mode=False,
                               seed=run_seed, repeat=hp.repeat)
    val_ds = SkeletonDataset(data, val_split, clip_len=hp.clip_len, num_clips=hp.val_clips, test_mode=True)
    say = (lambda msg: print(f"msg3d train: {msg}", file=sys.stderr, flush=True)) if info.is_main else (
        lambda msg: None)
    if info.is_main:
        out.mkdir(parents=True, exist_ok=True)
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
        return build_model(meta["num_classes"], layout=meta["layout"], in_channels=meta["channels"],
                           **dataclasses.asdict(hp.model))

    core = new_model().to(device)
    optimizer = build_optimizer(core, hp.scaled_lr(info.world_size), hp.momentum, hp.nesterov, hp.weight_decay)
    pin = device.type == "cuda"
    loader = train_loader(train_ds, hp.batch_size, hp.num_workers, info, run_seed, pin)
    val_loader = eval_loader(val_ds, hp.batch_size, hp.num_workers, info, run_seed, pin)
    iters_per_epoch, max_iters = config["derived"]["iters_per_epoch"], config["derived"]["max_iters"]
    schedule = CosineSchedule(optimizer, hp.scaled_lr(info.world_size), max_iters)
    state = TrainState()
    saver = CheckpointSaver(out, core, optimizer, schedule, config, info, device, new_model)
    if resume_from is not None:
        checkpoint_meta = saver.resume(resume_from, state, force=force)
        say(f"resuming from {resume_from} at iteration {state.global_iter}/{max_iters} "
            f"(epoch {state.epoch + 1}, batch {state.iter_in_epoch})")
        threads = checkpoint_meta.get("torch_threads")
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
    progress = Progress(max_iters, state.global_iter, min_seconds=progress_seconds, enabled=info.is_main)
    say(f"{config['data']['num_train_samples']} train / {config['data']['num_val_samples']} val samples, "
        f"{iters_per_epoch} iterations/epoch x {hp.epochs} epochs, lr {hp.scaled_lr(info.world_size):g}, "
        f"device {device}, world size {info.world_size}, seed {run_seed}")

    model.train()
    while state.epoch < hp.epochs:
        clock = EpochClock(state)
        train_one_epoch(model, loader, optimizer, schedule, state, clock, saver, progress, hp=hp,
                        iters_per_epoch=iters_per_epoch, device=device, amp=amp, dist_info=info)
        val = validate(core, val_loader, val_ds.labels, device=device, amp=amp, dist_info=info)
        row = distmod.broadcast_object(info, epoch_row(state, val, clock, schedule.lr_at(
            state.epoch * iters_per_epoch)) if info.is_main else None)
        say(f"epoch {row['epoch']}/{hp.epochs}: train loss {row['train_loss']:.4f} top1 {row['train_top1']:.4f}"
            f" | val top1 {row['val_top1']:.4f} top5 {row['val_top5']:.4f} | {row['seconds']:.1f} s")
        improved = state.finish_epoch(row)
        saver.end_epoch(state, row, val, improved)

    checksum = state_checksum(core)
    print(f"msg3d train: rank {info.rank} final weights sha256 {checksum}", file=sys.stderr, flush=True)
    return {
        "run_dir": str(out),
        "epochs": state.history,
        "best": state.best,
        "final_weights_sha256": checksum,
        "rank": info.rank,
        "world_size": info.world_size,
    }


def add_arguments(parser):
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = ("hyper-parameters (--hparams FILE / --hparams-json JSON; defaults: PYSKL's MS-G3D recipe):\n"
                     + hparams_help())
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
                        help="continue from RUN_DIR/latest.pth if RUN_DIR/config.json and the config latest.pth "
                             "records equal the new config (code digest included), else start over (for "
                             "workflows; says which on stderr)")
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
