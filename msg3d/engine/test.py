"""``msg3d test``: multi-clip test of a checkpoint on a split (REFERENCE §2.1, §6).

Each sample is cut into ``--num-clips`` (default 10) uniform clips (§4.3 test mode); the model's
softmax is averaged over the clips. Outputs (``<stem>`` = SCORES path without ``.pkl``):

* ``SCORES.pkl``             PYSKL's result format: a list, in split order, of per-sample float32
                             probability vectors.
* ``METRICS.json``           top1, top5, mean_class_accuracy (PYSKL's definitions), num_samples,
                             checkpoint path + sha256, config (ours, from the checkpoint), ...
                             Default path: ``<stem>_metrics.json``.
* ``<stem>_samples.csv``     ``frame_dir,label`` per sample, split order (fusion checks streams with it).
* ``<stem>_per_class.csv``   ``class,support,correct,accuracy`` (accuracy empty without samples).
* ``<stem>_confusion.npy``   ``(K, K)`` int64 counts, row = true class, column = predicted;
  ``<stem>_confusion.csv``   the same with a header (``true\\pred,0,1,...``).

Checkpoints: ours (``meta['config']`` holds the resolved training config, so the model's width,
scales and clip length come from it) or PYSKL's released ``.pth`` files (full-size model by
default, or the ``model``/``clip_len`` of ``--hparams``). The number of classes, the layout and
the channel count come from the store; a checkpoint that does not fit them is refused.
"""

import csv
import io
import sys
from pathlib import Path

import numpy as np
import torch

from msg3d.checkpoint import load_checkpoint, read_checkpoint, strip_wrapper_prefixes
from msg3d.data.store import open_store
from msg3d.engine.evaluate import predict
from msg3d.engine.hparams import load_hparams, resolve_hparams
from msg3d.engine.progress import Progress
from msg3d.engine.train import resolve_device
from msg3d.fileio import sha256_file, write_bytes_atomic, write_json_atomic, write_pickle_atomic, write_text_atomic
from msg3d.metrics import confusion_matrix, mean_class_accuracy, per_class_accuracy, top_k_accuracy


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


def _table_csv(header, rows):
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buf.getvalue()


def output_paths(scores_path, metrics_path=None):
    scores_path = Path(scores_path)
    stem = scores_path.with_suffix("") if scores_path.suffix == ".pkl" else scores_path
    return {
        "scores": scores_path,
        "metrics": Path(metrics_path) if metrics_path else Path(f"{stem}_metrics.json"),
        "samples": Path(f"{stem}_samples.csv"),
        "per_class": Path(f"{stem}_per_class.csv"),
        "confusion_npy": Path(f"{stem}_confusion.npy"),
        "confusion_csv": Path(f"{stem}_confusion.csv"),
    }


def write_outputs(paths, probs, labels, frame_dirs, metrics):
    """Write scores, samples, per-class and confusion files, then the metrics JSON (last)."""
    num_classes = probs.shape[1]
    write_pickle_atomic(paths["scores"], [row.copy() for row in probs])
    write_text_atomic(paths["samples"], _table_csv(["frame_dir", "label"], zip(map(str, frame_dirs), map(int, labels))))
    support, correct, accuracy = per_class_accuracy(probs, labels)
    rows = [[c, int(support[c]), int(correct[c]), "" if np.isnan(accuracy[c]) else repr(float(accuracy[c]))]
            for c in range(num_classes)]
    write_text_atomic(paths["per_class"], _table_csv(["class", "support", "correct", "accuracy"], rows))
    cm = confusion_matrix(np.argmax(probs, axis=1), labels, num_classes)
    buf = io.BytesIO()
    np.save(buf, cm)
    write_bytes_atomic(paths["confusion_npy"], buf.getvalue())
    cm_rows = [[c, *cm[c].tolist()] for c in range(num_classes)]
    write_text_atomic(paths["confusion_csv"], _table_csv(["true\\pred", *range(num_classes)], cm_rows))
    write_json_atomic(paths["metrics"], metrics)


def evaluate_checkpoint(data, split, checkpoint, out, metrics_path=None, *, num_clips=10, batch_size=8,
                        num_workers=2, device=None, amp=None, hparams=None, progress_seconds=10.0):
    """Test ``checkpoint`` on store ``data``'s ``SPLIT_val``; write the outputs; return the metrics dict.

    ``hparams``: for checkpoints without our config (PYSKL's), hyper-parameters (overrides of the
    defaults) whose ``model`` and ``clip_len`` are used (default: PYSKL's full-size model, clip_len 100).
    """
    from msg3d.data import SkeletonDataset
    from msg3d.models import build_model

    if num_clips < 1 or batch_size < 1 or num_workers < 0:
        raise ValueError("num_clips and batch_size must be >= 1, num_workers >= 0")
    device = resolve_device(device)
    if amp is not None and amp != "bf16":
        raise ValueError(f"unsupported --amp {amp!r}; only 'bf16' is supported")
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
        hp = config["hparams"]
    else:
        hp = resolve_hparams(hparams)
    model_hp = hp["model"]
    model = build_model(meta["num_classes"], layout=meta["layout"], in_channels=meta["channels"], **model_hp)
    load_checkpoint(model, ckpt)
    model.to(device)

    ds = SkeletonDataset(data, split_name, clip_len=hp["clip_len"], num_clips=num_clips, test_mode=True)
    loader = torch.utils.data.DataLoader(ds, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                                         pin_memory=device.type == "cuda")
    bar = Progress(len(loader), min_seconds=progress_seconds)
    probs = predict(model, loader, device, amp,
                    progress=lambda i: bar.update(i, f"testing {len(ds)} samples x {num_clips} clips"))
    labels = np.asarray(ds.labels, dtype=np.int64)
    top1, top5 = top_k_accuracy(probs, labels, (1, 5))
    paths = output_paths(out, metrics_path)
    metrics = {
        "top1": top1,
        "top5": top5,
        "mean_class_accuracy": mean_class_accuracy(probs, labels),
        "num_samples": int(len(labels)),
        "num_classes": int(probs.shape[1]),
        "num_clips": num_clips,
        "clip_len": hp["clip_len"],
        "model": model_hp,
        "split": split_name,
        "data": str(Path(data).resolve()),
        "store_meta": meta,
        "checkpoint": str(Path(checkpoint).resolve()),
        "checkpoint_sha256": sha256_file(checkpoint),
        "checkpoint_format": "msg3d" if config is not None else "pyskl",
        "config": config,
        "device": device.type,
        "amp": amp,
        "outputs": {k: str(v) for k, v in paths.items()},
    }
    write_outputs(paths, probs, labels, ds.frame_dirs, metrics)
    return metrics


def add_arguments(parser):
    parser.add_argument("--data", required=True, help="derived store folder (from `msg3d derive`)")
    parser.add_argument("--split", required=True, help="split NAME: tests on NAME_val (or on NAME if it is a split)")
    parser.add_argument("--checkpoint", required=True, help="our .pth (latest/best) or a PYSKL .pth")
    parser.add_argument("--out", required=True, help="SCORES.pkl: list of per-sample probability vectors")
    parser.add_argument("--metrics", default=None, help="METRICS.json (default: <stem>_metrics.json)")
    parser.add_argument("--num-clips", type=int, default=10, help="uniform clips per sample (default 10)")
    parser.add_argument("--batch-size", type=int, default=8, help="samples per batch (default 8)")
    parser.add_argument("--num-workers", type=int, default=2, help="data loader workers (default 2)")
    parser.add_argument("--device", choices=["cpu", "cuda"], default=None, help="default: cuda when available")
    parser.add_argument("--amp", choices=["bf16"], default=None, help="bf16 autocast")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--hparams", metavar="FILE", help="model hyper-parameters for a checkpoint without our config")
    group.add_argument("--hparams-json", metavar="JSON", help="the same as a JSON object")


def run(args):
    hp = None
    if args.hparams or args.hparams_json:
        hp = load_hparams(args.hparams, args.hparams_json)
    metrics = evaluate_checkpoint(args.data, args.split, args.checkpoint, args.out, args.metrics,
                                  num_clips=args.num_clips, batch_size=args.batch_size,
                                  num_workers=args.num_workers, device=args.device, amp=args.amp, hparams=hp)
    print(f"top1 {100 * metrics['top1']:.2f}  top5 {100 * metrics['top5']:.2f}  "
          f"mean class accuracy {100 * metrics['mean_class_accuracy']:.2f}  ({metrics['num_samples']} samples)")
    return 0
