"""``msg3d test``: multi-clip test of a checkpoint on a split (REFERENCE §2.1, §6).

Each sample is cut into ``--num-clips`` uniform clips (§4.3 test mode; default: the checkpoint's
recorded ``test_clips``, PYSKL's 10, or MS-G3D's 1 clip of 300 frames for Kinetics); the model's
softmax is averaged over the clips. Outputs: the scores files of ``msg3d.scores`` (``SCORES.pkl`` in
PYSKL's result format, its samples, per-class and confusion files) and ``METRICS.json`` (default
``<stem>_metrics.json``): top1, top5, mean_class_accuracy (PYSKL's definitions), num_samples,
checkpoint path + sha256, config (ours, from the checkpoint), ...

``--max-samples N`` tests only the split's first N samples (split order), a quick full-scale smoke
run: the outputs cover those N, whose scores are the first N of a full test's, and METRICS.json
records ``max_samples`` (None without the option) beside ``split_samples``, the split's size; the
console says the test was cut short.

Checkpoints: ours (``meta['config']`` holds the resolved training config, so the model's width,
scales, clip length, ``amp`` and ``num_workers`` come from it; ``--amp``/``--num-workers``
override the last two) or PYSKL's released ``.pth`` files (full-size model by default, or the
hyper-parameters of ``--hparams``). The number of classes, the layout and the channel count come
from the store; a checkpoint that does not fit them is refused, and so is one that gives
non-finite scores (nothing is written then).

Train/test overlap: when the store was derived from the same annotations as the checkpoint's
training store (equal source sha256 in the two store metas), the test samples that are in the
checkpoint's training split (by frame_dir) are counted, e.g. an xsub checkpoint tested on xview's
val; a non-zero count is a warning on stderr. METRICS.json records it as ``train_overlap``.
"""

import dataclasses
import sys
from pathlib import Path

import numpy as np
import torch

from msg3d.checkpoint import load_checkpoint, read_checkpoint, strip_wrapper_prefixes
from msg3d.data.store import open_store
from msg3d.engine.device import check_amp, resolve_device
from msg3d.engine.evaluate import predict
from msg3d.engine.hparams import AMP_MODES, load_hparams, resolve_hparams
from msg3d.engine.progress import Progress
from msg3d.fileio import sha256_file
from msg3d.scores import check_finite, sibling_paths, summary_metrics, write_scores


def eval_split_name(store, store_dir, split):
    """``NAME_val`` for ``--split NAME`` (as PYSKL tests on ``*_val``), or ``NAME`` itself if it is a split."""
    for name in (f"{split}_val", split):
        if name in store.splits:
            return name
    raise ValueError(
        f"split {split!r}: neither {split + '_val'!r} nor {split!r} is in store {store_dir}; "
        f"available splits: {', '.join(sorted(store.splits)) or '(none)'}"
    )


def check_checkpoint_fits(ckpt, path, meta, num_person=2):
    """Refuse a checkpoint whose class count, layout or input channels differ from the store's.

    Returns the training config of our checkpoints (``meta['config']``), None for PYSKL's."""
    sd = strip_wrapper_prefixes(ckpt["state_dict"])
    meta_in = ckpt.get("meta")
    config = meta_in.get("config") if isinstance(meta_in, dict) else None
    if not isinstance(config, dict):  # PYSKL keeps its config as text
        config = None
    if config is not None:
        trained = config.get("data", {}).get("meta", {})
        for key in ("layout", "modality"):
            if key in trained and key in meta and trained[key] != meta[key]:
                raise ValueError(
                    f"checkpoint {path} was trained on {key} {trained[key]!r}, but the store has {meta[key]!r}"
                )
    head = sd.get("cls_head.fc_cls.weight")
    if head is None:
        raise ValueError(f"checkpoint {path} has no 'cls_head.fc_cls.weight': not an MS-G3D recognizer checkpoint")
    if head.shape[0] != meta["num_classes"]:
        raise ValueError(
            f"checkpoint {path} has {head.shape[0]} classes, but the store has {meta['num_classes']}"
        )
    graph = sd.get("backbone.A")
    if graph is not None and graph.shape[0] != meta["num_joints"]:
        raise ValueError(
            f"checkpoint {path} is for a {graph.shape[0]}-joint layout, but the store's layout "
            f"{meta['layout']!r} has {meta['num_joints']} joints"
        )
    data_bn = sd.get("backbone.data_bn.weight")
    if data_bn is not None and data_bn.shape[0] != num_person * meta["num_joints"] * meta["channels"]:
        raise ValueError(
            f"checkpoint {path} expects {data_bn.shape[0]} = persons x joints x channels inputs, but the "
            f"store gives {num_person} x {meta['num_joints']} x {meta['channels']}"
        )
    return config


def train_overlap(config, store, split_name, num_tested=None):
    """How many of the first ``num_tested`` samples (all by default) of ``store``'s split ``split_name``
    the checkpoint whose training config is ``config`` was trained on: ``{train_split, count,
    num_test_samples, source_sha256}``, or None when that cannot be told (no config: PYSKL's
    checkpoint; another or unknown annotation source; the training split is not in this store).
    Samples are matched by frame_dir."""
    data = (config or {}).get("data") or {}
    train_split = data.get("train_split") or (data.get("split") and f"{data['split']}_train")
    trained_sha = ((data.get("meta") or {}).get("source") or {}).get("sha256")
    store_sha = (store.meta.get("source") or {}).get("sha256")
    if not trained_sha or trained_sha != store_sha or train_split not in store.splits:
        return None
    trained = set(store.frame_dirs[store.splits[train_split]].tolist())
    tested = store.frame_dirs[store.splits[split_name][:num_tested]].tolist()
    return {"train_split": train_split, "count": sum(name in trained for name in tested),
            "num_test_samples": len(tested), "source_sha256": trained_sha}


def evaluate_checkpoint(data, split, checkpoint, out, metrics_path=None, *, num_clips=None, batch_size=8,
                        num_workers=None, device=None, amp=None, hparams=None, progress_seconds=10.0,
                        logits_out=None, max_samples=None):
    """Test ``checkpoint`` on store ``data``'s ``SPLIT_val``; write the outputs; return the metrics dict.

    ``hparams``: for checkpoints without our config (PYSKL's), hyper-parameters (overrides of the
    defaults) whose ``model``, ``clip_len``, ``test_clips``, ``amp`` and ``num_workers`` are used
    (default: PYSKL's full-size model, clip_len 100, 10 clips, float32, 2 workers). ``num_clips``,
    ``amp`` ('none' or 'bf16') and ``num_workers`` None: the hyper-parameters' ``test_clips``,
    ``amp`` and ``num_workers`` (the checkpoint's for ours).
    ``logits_out``: also write the clip-averaged logits there, as a scores stream (pickle + samples
    CSV, ``msg3d.scores``): what MS-G3D's ensemble sums (``msg3d fuse --logits``).
    ``max_samples``: test only the split's first ``max_samples`` samples (ValueError if < 1).
    """
    from msg3d.data.dataset import SkeletonDataset
    from msg3d.models import build_model

    if (num_clips is not None and num_clips < 1) or batch_size < 1 or (num_workers is not None and num_workers < 0):
        raise ValueError("num_clips and batch_size must be >= 1, num_workers >= 0")
    if amp is not None and amp not in AMP_MODES:
        raise ValueError(f"unsupported --amp {amp!r}; use one of {', '.join(AMP_MODES)}")
    if max_samples is not None and max_samples < 1:
        raise ValueError(f"--max-samples must be >= 1, got {max_samples}")
    device = resolve_device(device)
    store = open_store(data)
    split_name = eval_split_name(store, data, split)
    meta = store.meta
    state_dict, others, _ = read_checkpoint(checkpoint)
    ckpt = {**others, "state_dict": state_dict}
    config = check_checkpoint_fits(ckpt, checkpoint, meta)
    if config is not None:
        if hparams is not None:
            raise ValueError(f"{checkpoint} carries its training config; --hparams is only for checkpoints without "
                             "one (e.g. PYSKL's)")
        try:
            hp = resolve_hparams(config["hparams"])
        except ValueError as exc:
            raise ValueError(f"checkpoint {checkpoint}: its training config: {exc}") from None
    else:
        hp = resolve_hparams(hparams)
    model_hp = dataclasses.asdict(hp.model)
    num_clips = hp.test_clips if num_clips is None else num_clips
    num_workers = hp.num_workers if num_workers is None else num_workers
    amp = hp.amp if amp is None else amp
    autocast_mode = None if amp == "none" else amp
    check_amp(autocast_mode)
    split_samples = len(store.splits[split_name])
    num_tested = split_samples if max_samples is None else min(max_samples, split_samples)
    overlap = train_overlap(config, store, split_name, num_tested)
    if overlap is not None and overlap["count"]:
        print(f"msg3d test: warning: {overlap['count']} of the {overlap['num_test_samples']} samples of split "
              f"{split_name!r} are in split {overlap['train_split']!r} that {checkpoint} was trained on (same "
              f"annotations, sha256 {overlap['source_sha256'][:12]}...): its accuracy on them is no test result",
              file=sys.stderr, flush=True)
    model = build_model(meta["num_classes"], layout=meta["layout"], in_channels=meta["channels"], **model_hp)
    load_checkpoint(model, ckpt)
    model.to(device)

    ds = SkeletonDataset(data, split_name, clip_len=hp.clip_len, num_clips=num_clips, test_mode=True)
    if num_tested < split_samples:
        print(f"msg3d test: --max-samples {max_samples}: testing the first {num_tested} of the {split_samples} "
              f"samples of split {split_name!r} only", file=sys.stderr, flush=True)
    loader = torch.utils.data.DataLoader(torch.utils.data.Subset(ds, range(num_tested)), batch_size=batch_size,
                                         shuffle=False, num_workers=num_workers, pin_memory=device.type == "cuda")
    bar = Progress(len(loader), min_seconds=progress_seconds)
    probs, logits = predict(model, loader, device, autocast_mode, with_logits=True,
                            progress=lambda i: bar.update(i, f"testing {num_tested} samples x {num_clips} clips"))
    frame_dirs = ds.frame_dirs[:num_tested]
    # NaN weights (a diverged run, a corrupt file) give NaN scores, whose metrics would look real
    check_finite(probs, f"checkpoint {checkpoint} gives", frame_dirs,
                 " (NaN weights? diverged run?); nothing written")
    labels = np.asarray(ds.labels[:num_tested], dtype=np.int64)
    paths = sibling_paths(out, metrics_path)
    metrics = {
        **summary_metrics(probs, labels),
        "num_classes": int(probs.shape[1]),
        "num_clips": num_clips,
        "clip_len": hp.clip_len,
        "model": model_hp,
        "split": split_name,
        "split_samples": split_samples,
        "max_samples": max_samples,
        "data": str(Path(data).resolve()),
        "store_meta": meta,
        "checkpoint": str(Path(checkpoint).resolve()),
        "checkpoint_sha256": sha256_file(checkpoint),
        "checkpoint_format": "msg3d" if config is not None else "pyskl",
        "config": config,
        "device": device.type,
        "amp": amp,
        "num_workers": num_workers,
        "train_overlap": overlap,
        "outputs": paths.as_strings(),
    }
    if logits_out is not None:
        metrics["outputs"]["logits"] = str(logits_out)
        write_scores(logits_out, logits, frame_dirs, labels)
    write_scores(out, probs, frame_dirs, labels, metrics, metrics_path)
    return metrics


def add_arguments(parser):
    parser.add_argument("--data", required=True, help="derived store folder (from `msg3d derive`)")
    parser.add_argument("--split", required=True, help="split NAME: tests on NAME_val (or on NAME if it is a split)")
    parser.add_argument("--checkpoint", required=True, help="our .pth (latest/best) or a PYSKL .pth")
    parser.add_argument("--out", required=True, help="SCORES.pkl: list of per-sample probability vectors")
    parser.add_argument("--metrics", default=None, help="METRICS.json (default: <stem>_metrics.json)")
    parser.add_argument("--logits", metavar="LOGITS.pkl", default=None,
                        help="also write the clip-averaged logits as a scores stream (for MS-G3D's ensemble: "
                             "msg3d fuse --logits)")
    parser.add_argument("--num-clips", type=int, default=None,
                        help="uniform clips per sample (default: the checkpoint's recorded test_clips; PYSKL: 10)")
    parser.add_argument("--batch-size", type=int, default=8, help="samples per batch (default 8)")
    parser.add_argument("--max-samples", type=int, default=None, metavar="N",
                        help="test only the split's first N samples (a quick full-scale smoke run; recorded in "
                             "the metrics)")
    parser.add_argument("--num-workers", type=int, default=None,
                        help="data loader workers (default: the checkpoint's hyper-parameter num_workers; PYSKL: 2)")
    parser.add_argument("--device", choices=["cpu", "cuda"], default=None, help="default: cuda when available")
    parser.add_argument("--amp", choices=list(AMP_MODES), default=None,
                        help="autocast mode (default: the checkpoint's hyper-parameter amp; PYSKL: none, float32)")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--hparams", metavar="FILE", help="hyper-parameters for a checkpoint without our config")
    group.add_argument("--hparams-json", metavar="JSON", help="the same as a JSON object")


def run(args):
    hp = None
    if args.hparams or args.hparams_json:
        hp = load_hparams(args.hparams, args.hparams_json)
    metrics = evaluate_checkpoint(args.data, args.split, args.checkpoint, args.out, args.metrics,
                                  num_clips=args.num_clips, batch_size=args.batch_size,
                                  num_workers=args.num_workers, device=args.device, amp=args.amp, hparams=hp,
                                  logits_out=args.logits, max_samples=args.max_samples)
    tested = f"{metrics['num_samples']} samples"
    if metrics["num_samples"] < metrics["split_samples"]:
        tested = f"first {tested} of {metrics['split_samples']}, --max-samples {metrics['max_samples']}"
    print(f"top1 {100 * metrics['top1']:.2f}  top5 {100 * metrics['top5']:.2f}  "
          f"mean class accuracy {100 * metrics['mean_class_accuracy']:.2f}  ({tested})")
    return 0
