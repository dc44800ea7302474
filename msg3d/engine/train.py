"""``msg3d train``: PYSKL's MS-G3D training recipe with exact resume, determinism, bf16 and DDP.

Writes into RUN_DIR (rank 0 only) ``config.json``: the resolved config (hyper-parameters incl. amp,
compile and tensorboard, seed, data store + meta, split, runtime: device, world size; derived
numbers: lr used, iterations; and ``code_digest``, ``msg3d.provenance``'s digest of the training
code, the value the workflow's train rule tracks), so that a run is never continued by a different
config or code. The other records (latest.pth, best.pth, epochs.csv, log.jsonl, tensorboard/) are
``msg3d.engine.saver``'s; the resume/new-run/refuse decision and the lock that keeps a second
``msg3d train`` out of RUN_DIR are ``msg3d.engine.run_dir``'s; one epoch and validation are
``msg3d.engine.loop``'s.

Determinism: the training order depends only on (seed, epoch) and each item's sampling on (seed,
epoch, item), never on the number of data workers; on CPU deterministic algorithms are on, so the
same config and seed give identical weights and epochs.csv (timing columns aside), given the same
number of CPU threads (kernels sum in thread-dependent order). Without ``--seed`` a new run gets a
random seed, and a rerun in the same RUN_DIR reuses the recorded one.

Resume (PYSKL's habit: the default): rerunning the command continues from ``latest.pth`` when it
records the same config, at the exact iteration, skipping the batches of the epoch's order that
were already consumed, so the final weights and epochs.csv equal an uninterrupted run's. Everything
else in RUN_DIR is rebuilt from ``latest.pth`` (epochs.csv from the history, best.pth from its
copy), so a resume also works after those files were deleted, as Snakemake deletes a job's declared
outputs before rerunning it. A run that already finished, with its files intact, is left as it is
("nothing to do"). A different config is refused unless ``--force`` (a new run, which replaces the
folder's files only once it has written its first checkpoint) or ``--auto-resume`` (the workflow's
mode: a new run when the config or code changed).

DDP (``torchrun``): one process per GPU (gloo on CPU), each with ``batch_size`` samples; BN
statistics are per process as in PYSKL, and rank 0's are adopted by all ranks before validating
(so every rank validates, and rank 0 saves, the same model); validation is sharded and gathered.
"""

import argparse
import contextlib
import dataclasses
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
from msg3d.engine.hparams import AMP_MODES, RECIPES, hparams_help, load_hparams, resolve_hparams
from msg3d.engine.loader import eval_loader, iterations_per_epoch, train_loader
from msg3d.engine.loop import EpochClock, TrainState, epoch_row, train_one_epoch, validate
from msg3d.engine.progress import IterationTimer, Progress
from msg3d.engine.run_dir import lock_run_dir, prepare_run_dir
from msg3d.engine.saver import CheckpointSaver, finished_summary, require_tensorboard, weights_sha256
from msg3d.engine.schedule import build_optimizer, build_schedule
from msg3d.provenance import code_digest


def split_pair(store, store_dir, split, train_split=None, val_split=None):
    """``(train split, val split)``: ``--train-split``/``--val-split`` where given (PYSKL's K400 and
    custom pickles name theirs ``train``/``val``), else ``NAME_train``/``NAME_val`` for ``--split
    NAME``; a ValueError lists the store's split names when one is missing."""
    names = set(store.splits)
    train, val = train_split or f"{split}_train", val_split or f"{split}_val"
    if train in names and val in names:
        return train, val
    if train_split or val_split:
        missing = ", ".join(repr(n) for n in (train, val) if n not in names)
        raise ValueError(f"split {missing} not in store {store_dir}; store splits: {', '.join(sorted(names))}")
    pairs = sorted(n[: -len("_train")] for n in names if n.endswith("_train") and n[: -len("_train")] + "_val" in names)
    raise ValueError(
        f"split {split!r} needs {train!r} and {val!r} in store {store_dir}; "
        f"available split names: {', '.join(pairs) or '(none)'} (store splits: {', '.join(sorted(names))})"
    )


def _jsonable(obj):
    """JSON round trip (tuples become lists), so a config compares equal to its reloaded config.json."""
    return json.loads(json.dumps(obj, sort_keys=True))


def make_config(hp, seed, store_dir, store, split, train_split, val_split, n_train, n_val, device, world_size,
                iters_per_epoch):
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
            "runtime": {"device": device.type, "world_size": world_size},
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
    return weights_sha256(model.state_dict())


def with_overrides(hp, amp=None, compile_model=None, tensorboard=None):
    """``hp`` with the command line's ``--amp``/``--compile``/``--tensorboard`` (None: keep ``hp``'s)."""
    given = {"amp": amp, "compile": compile_model, "tensorboard": tensorboard}
    return dataclasses.replace(hp, **{k: v for k, v in given.items() if v is not None})


def train(data, split, out, hparams=None, *, resume=False, auto_resume=False, force=False, seed=None, device=None,
          amp=None, compile_model=None, tensorboard=None, progress_seconds=10.0, train_split=None, val_split=None,
          stop_at=None):
    """Train on ``SPLIT_train`` of store ``data``, validating on ``SPLIT_val``; returns a summary dict
    (``already_finished``: the run had ended before, nothing was done).

    ``hparams``: an ``HParams`` or a mapping of overrides of its defaults; ``amp`` ('none' or
    'bf16'), ``compile_model`` and ``tensorboard`` override its fields of those names. ``train_split``
    / ``val_split`` name the two splits explicitly instead (``split`` is then only recorded).
    ``resume``/``auto_resume``/``force``: see ``msg3d.engine.run_dir`` (at most one). ``stop_at``
    (``--max-iters``): stop once global iteration ``stop_at`` is done, with latest.pth holding it
    (validated and checkpointed as usual when it ends an epoch), for a quick smoke run of a full-size
    config; the run is the same run (nothing of it is recorded in the config), so the same command
    without it continues where it stopped. The summary's ``stopped_at`` is then that iteration.
    """
    if stop_at is not None and stop_at < 1:
        raise ValueError(f"--max-iters must be 1 or more, got {stop_at}")
    if seed is not None and not 0 <= seed < 2**32:
        raise ValueError(f"--seed must be in [0, 2**32) (numpy's seed range), got {seed}")
    if sum((resume, auto_resume, force)) > 1:
        raise ValueError("--resume, --auto-resume and --force exclude each other")
    hp = with_overrides(resolve_hparams(hparams), amp, compile_model, tensorboard)
    if hp.tensorboard:
        require_tensorboard()
    device = resolve_device(device)
    check_amp(_autocast_mode(hp))
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
            return _train(data, split, Path(out), hp, info, (resume, auto_resume, force), seed, device,
                          progress_seconds, run_lock, (train_split, val_split), stop_at)
        finally:
            torch.use_deterministic_algorithms(previous_deterministic)
            distmod.shutdown(info)


def _autocast_mode(hp):
    """``msg3d.engine.device.autocast``'s argument for hyper-parameter ``amp`` (None: float32)."""
    return None if hp.amp == "none" else hp.amp


def _say(info):
    """A function printing ``msg3d train: MESSAGE`` on stderr on rank 0 (a no-op on the others)."""
    if info.is_main:
        return lambda msg: print(f"msg3d train: {msg}", file=sys.stderr, flush=True)
    return lambda msg: None


def _decide_run(data, split, out, hp, info, modes, seed, device, run_lock, split_names):
    """Open the store, lock RUN_DIR (into the ExitStack ``run_lock``), build the config and decide on
    rank 0; every rank gets the outcome, or raises rank 0's error: ``(store, decision, train split
    name, val split name)``, decision: ``config``, ``resume_from`` (str or None), ``replaces`` and
    ``finished`` (``saver.finished_summary`` of a run that ended, else None)."""
    store = open_store(data)
    train_split, val_split = split_pair(store, data, split, *split_names)
    decision = None
    if info.is_main:
        try:
            run_lock.enter_context(lock_run_dir(out))
            n_train = len(store.splits[train_split])
            n_val = len(store.splits[val_split])
            iters_per_epoch = iterations_per_epoch(n_train * hp.repeat, info.world_size, hp.batch_size)
            chosen_seed = seed if seed is not None else secrets.randbelow(2**31)
            config = make_config(hp, chosen_seed, data, store, split, train_split, val_split, n_train, n_val,
                                 device, info.world_size, iters_per_epoch)
            resume, auto_resume, force = modes
            plan = prepare_run_dir(out, config, seed_given=seed is not None, resume=resume, force=force,
                                   auto_resume=auto_resume)
            finished = None
            if plan.resume_from is not None:
                finished = finished_summary(out, plan.resume_from, plan.config["derived"]["max_iters"])
            decision = {"config": plan.config, "resume_from": plan.resume_from and str(plan.resume_from),
                        "replaces": plan.replaces, "finished": finished}
        except (ValueError, OSError) as exc:  # e.g. the folder in use: every rank must stop, not wait
            decision = {"error": exc}
    decision = distmod.broadcast_object(info, decision)
    if "error" in decision:
        raise decision["error"]
    return store, decision, train_split, val_split


def _summary(out, info, epochs, best, checksum, already_finished, stopped_at=None):
    print(f"msg3d train: rank {info.rank} final weights sha256 {checksum}", file=sys.stderr, flush=True)
    return {"run_dir": str(out), "epochs": epochs, "best": best, "final_weights_sha256": checksum,
            "rank": info.rank, "world_size": info.world_size, "already_finished": already_finished,
            "stopped_at": stopped_at}


def _train(data, split, out, hp, info, modes, seed, device, progress_seconds, run_lock, split_names, stop_at):
    from msg3d.data.dataset import SkeletonDataset
    from msg3d.models import build_model

    store, decision, train_split, val_split = _decide_run(data, split, out, hp, info, modes, seed, device,
                                                          run_lock, split_names)
    config, resume_from, finished = decision["config"], decision["resume_from"], decision["finished"]
    say = _say(info)
    iters_per_epoch, max_iters = config["derived"]["iters_per_epoch"], config["derived"]["max_iters"]
    if finished is not None:
        say(f"{out}: training already finished at iteration {finished['iter']}/{max_iters} (epoch "
            f"{finished['epoch']}/{hp.epochs}); nothing to do (--force starts a new run)")
        return _summary(out, info, finished["epochs"], finished["best"], finished["final_weights_sha256"], True)
    run_seed = config["seed"]
    train_ds = SkeletonDataset(data, train_split, clip_len=hp.clip_len, num_clips=1, test_mode=False,
                               seed=run_seed, repeat=hp.repeat)
    val_ds = SkeletonDataset(data, val_split, clip_len=hp.clip_len, num_clips=hp.val_clips, test_mode=True)
    if info.is_main:
        out.mkdir(parents=True, exist_ok=True)

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
    schedule = build_schedule(hp, optimizer, hp.scaled_lr(info.world_size), max_iters, iters_per_epoch)
    state = TrainState()
    saver = CheckpointSaver(out, core, optimizer, schedule, config, info, device, new_model)
    try:
        if resume_from is None:
            saver.start(decision["replaces"])
        else:
            checkpoint_meta = saver.resume(resume_from, state)
            if state.global_iter >= max_iters:
                say(f"{out}: training already finished at iteration {state.global_iter}/{max_iters} (epoch "
                    f"{state.epoch}/{hp.epochs}); rebuilt config.json, epochs.csv and best.pth from {resume_from}")
            else:
                say(f"resuming from {resume_from} at iteration {state.global_iter}/{max_iters} (epoch "
                    f"{state.epoch + 1}/{hp.epochs}, batch {state.iter_in_epoch}/{iters_per_epoch})")
            threads = checkpoint_meta.get("torch_threads")
            if device.type == "cpu" and threads not in (None, torch.get_num_threads()):
                say(f"note: the checkpoint was written with {threads} CPU threads, this process uses "
                    f"{torch.get_num_threads()}; CPU results are bit-identical only with equal thread counts")
        _run_epochs(core, loader, val_loader, val_ds, optimizer, schedule, state, saver, hp, config, info, device,
                    progress_seconds, say, stop_at)
    finally:
        saver.close()
    stopped_at = state.global_iter if state.global_iter < max_iters else None
    if stopped_at is not None:
        say(f"stopped at iteration {stopped_at}/{max_iters} (--max-iters {stop_at}); {out / 'latest.pth'} holds "
            f"it: the same command without --max-iters continues the run")
    return _summary(out, info, state.history, state.best, state_checksum(core), False, stopped_at)


def _run_epochs(core, loader, val_loader, val_ds, optimizer, schedule, state, saver, hp, config, info, device,
                progress_seconds, say, stop_at):
    """Train and validate the epochs ``state`` has left, or until global iteration ``stop_at``."""
    if state.epoch >= hp.epochs:
        return
    iters_per_epoch, max_iters = config["derived"]["iters_per_epoch"], config["derived"]["max_iters"]
    amp = _autocast_mode(hp)
    model = core
    if hp.compile:
        core.compile()
    if info.enabled:
        model = distmod.data_parallel(core, device)
    progress = Progress(max_iters, state.global_iter, min_seconds=progress_seconds, enabled=info.is_main)
    timer = IterationTimer()
    say(f"{config['data']['num_train_samples']} train / {config['data']['num_val_samples']} val samples, "
        f"{iters_per_epoch} iterations/epoch x {hp.epochs} epochs, lr {hp.scaled_lr(info.world_size):g}, "
        f"device {device}, amp {hp.amp}, compile {hp.compile}, world size {info.world_size}, seed {config['seed']}")

    model.train()
    while state.epoch < hp.epochs and (stop_at is None or state.global_iter < stop_at):
        clock = EpochClock(state)
        train_one_epoch(model, loader, optimizer, schedule, state, clock, saver, progress, timer, hp=hp,
                        iters_per_epoch=iters_per_epoch, device=device, amp=amp, dist_info=info, stop_at=stop_at)
        if state.iter_in_epoch < iters_per_epoch:  # stopped inside the epoch (latest.pth written)
            return
        val = validate(core, val_loader, val_ds.labels, device=device, amp=amp, dist_info=info)
        row = distmod.broadcast_object(info, epoch_row(state, val, clock, schedule.lr_at(
            state.epoch * iters_per_epoch)) if info.is_main else None)
        say(f"epoch {row['epoch']}/{hp.epochs}: train loss {row['train_loss']:.4f} top1 {row['train_top1']:.4f}"
            f" | val top1 {row['val_top1']:.4f} top5 {row['val_top5']:.4f} | {row['seconds']:.1f} s")
        improved = state.finish_epoch(row)
        saver.end_epoch(state, row, val, improved)


def add_arguments(parser):
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = ("hyper-parameters (--hparams FILE / --hparams-json JSON; defaults: PYSKL's MS-G3D recipe):\n"
                     + hparams_help())
    parser.add_argument("--data", required=True, help="derived store folder (from `msg3d derive`)")
    parser.add_argument("--split", required=True,
                        help="split pair NAME: trains on NAME_train, validates on NAME_val (e.g. xsub)")
    parser.add_argument("--train-split", metavar="NAME", help="train on this split instead of SPLIT_train "
                        "(e.g. 'train' in PYSKL's K400 and custom pickles)")
    parser.add_argument("--val-split", metavar="NAME", help="validate on this split instead of SPLIT_val")
    parser.add_argument("--recipe", choices=sorted(RECIPES), default="pyskl",
                        help="the hyper-parameters --hparams/--hparams-json are merged over: pyskl (PYSKL's "
                             "MS-G3D recipe, the defaults below) or msg3d-kinetics (MS-G3D's Kinetics recipe)")
    parser.add_argument("--out", required=True, help="run folder (config.json, latest.pth, best.pth, ...)")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--hparams", metavar="FILE", help="YAML/JSON file of hyper-parameters (over PYSKL defaults)")
    group.add_argument("--hparams-json", metavar="JSON", help="hyper-parameters as a JSON object")
    resume = parser.add_mutually_exclusive_group()
    resume.add_argument("--force", action="store_true",
                        help="start a new run even if RUN_DIR holds one (its files are replaced once the new run "
                             "has written its first checkpoint)")
    resume.add_argument("--resume", action="store_true",
                        help="require a checkpoint to resume: an error when RUN_DIR/latest.pth is missing (without "
                             "a flag, a run resumes when it can and starts otherwise)")
    resume.add_argument("--auto-resume", action="store_true",
                        help="never refuse (the workflow's mode): resume when RUN_DIR/latest.pth and config.json "
                             "record the same config (code digest included), else start a new run, saying why "
                             "on stderr")
    parser.add_argument("--seed", type=int, default=None,
                        help="random seed (default: the run folder's recorded seed, else a random one)")
    parser.add_argument("--device", choices=["cpu", "cuda"], default=None, help="default: cuda when available")
    parser.add_argument("--amp", choices=list(AMP_MODES), default=None,
                        help="autocast mode, overrides hyper-parameter amp (none: float32; bf16)")
    parser.add_argument("--compile", action="store_true", default=None,
                        help="torch.compile the model (sets hyper-parameter compile)")
    parser.add_argument("--tensorboard", action="store_true", default=None,
                        help="also write TensorBoard scalars to RUN_DIR/tensorboard (sets hyper-parameter "
                             "tensorboard; needs pip install -e '.[tensorboard]')")
    parser.add_argument("--max-iters", type=int, metavar="N",
                        help="stop once global iteration N is done (latest.pth holds it; validated when it ends an "
                             "epoch): a quick smoke run of a full-size config; the same command without it "
                             "continues the run")
    parser.add_argument("--expect-code-digest", metavar="HEX",
                        help="refuse to start unless the training code's digest (msg3d.provenance) is HEX: the "
                             "workflow passes the digest it tracks, so a stale or foreign msg3d is caught")


def run(args):
    if args.expect_code_digest is not None and args.expect_code_digest != code_digest(__name__):
        raise ValueError(
            f"the training code's digest is {code_digest(__name__)} but {args.expect_code_digest} was expected: "
            f"the msg3d that runs ({Path(__file__).parents[1]}) is not the code the workflow hashed"
        )
    hp = load_hparams(args.hparams, args.hparams_json, recipe=args.recipe)
    train(args.data, args.split, args.out, hp, resume=args.resume, auto_resume=args.auto_resume,
          force=args.force, seed=args.seed, device=args.device, amp=args.amp, compile_model=args.compile,
          tensorboard=args.tensorboard, train_split=args.train_split, val_split=args.val_split,
          stop_at=args.max_iters)
    return 0
