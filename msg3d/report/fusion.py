"""`msg3d fuse`: weighted score fusion of several streams (REFERENCE §7).

PYSKL's recipe, which this reproduces: each stream's test result is already a list of softmaxed,
clip-averaged probability vectors; the fused score of a sample is the weighted sum of its streams'
vectors, with no further softmax or normalisation (two-stream = 1 J : 1 B, four-stream =
2 J : 2 B : 1 JM : 1 BM). A *stream* is the ``SCORES.pkl`` written by ``msg3d test`` with the
``<stem>_samples.csv`` beside it (format: ``msg3d.scores``), which lets fusion refuse streams that
do not cover the same samples in the same order. PYSKL's own ``result.pkl`` has no samples CSV: with
``--ann ANN.pkl --split NAME`` such a stream's samples are split NAME's annotations, in annotation
order (as PYSKL's PoseDataset lists them, hence as its ``tools/test.py`` dumps the scores).

With ``--logits`` the streams are the clip-averaged *logits* that ``msg3d test --logits`` writes,
summed the same way: MS-G3D's own ensemble (``ensemble.py`` adds the joint and bone streams' raw
test scores, the model outputs before any softmax; REFERENCE §14), whose published Kinetics
joint+bone number is such a sum.

The optional weight search (``--search``) is **not** a PYSKL number: it splits the samples into
two class-stratified halves, picks the weights on one half and reports metrics on the other half
only, and its JSON says so. A val set that cannot be halved so (``split_problem``: no samples, or
a class with a single sample) does not stop a workflow: the search writes a JSON with
``skipped`` (the reason) and ``num_samples`` instead of weights and metrics, and exits 0.
"""

import itertools
import math
from pathlib import Path

import numpy as np

from msg3d.data.pyskl_io import load_annotations, split_samples
from msg3d.fileio import write_json_atomic
from msg3d.report import parse_named_paths
from msg3d.scores import (check_finite, check_same_samples, read_result, read_scores, sibling_paths,
                          summary_metrics, write_scores)


def fuse_scores(scores, weights):
    """Weighted sum of the streams' probabilities: ``sum_s weights[s] * scores[s]``, shape (N, K).

    ``scores`` and ``weights`` are dicts keyed by stream name with the same keys; weights are
    non-negative and not all zero. A non-finite sum (weights so large that it overflows) is a
    ValueError.
    """
    if set(scores) != set(weights):
        raise ValueError(f"weights are given for {sorted(weights)} but the streams are {sorted(scores)}")
    for name, w in weights.items():
        if not isinstance(w, (int, float)) or isinstance(w, bool) or not math.isfinite(w) or w < 0:
            raise ValueError(f"weight of stream {name!r} must be a finite number >= 0, got {w!r}")
    if not any(weights.values()):
        raise ValueError("all fusion weights are zero")
    shapes = {name: s.shape for name, s in scores.items()}
    if len(set(shapes.values())) != 1:
        raise ValueError(f"streams have different score shapes (samples, classes): {shapes}")
    fused = np.zeros(next(iter(shapes.values())), dtype=np.float64)
    with np.errstate(over="ignore"):  # an overflow is the error below, not a warning
        for name in sorted(scores):  # fixed order: the same bytes whatever order the streams came in
            fused += float(weights[name]) * scores[name]
    check_finite(fused, f"fusion with weights {weights} gives",
                 consequence=" (weights so large that the sum overflows?)")
    return fused


def stratified_halves(labels, seed):
    """Split sample indices into two disjoint class-stratified halves ``(select, evaluate)``.

    Each class's samples are shuffled with ``default_rng(seed)`` and the first ``ceil(n/2)`` go to
    the selection half, so both halves hold every class that has at least two samples.
    """
    rng = np.random.default_rng(seed)
    select, evaluate = [], []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        k = (len(idx) + 1) // 2
        select.extend(idx[:k].tolist())
        evaluate.extend(idx[k:].tolist())
    return np.sort(np.asarray(select, dtype=np.int64)), np.sort(np.asarray(evaluate, dtype=np.int64))


def split_problem(labels):
    """Why the samples with ``labels`` (N,) cannot be split into two class-stratified halves, or None.

    The rule: both halves must hold every class the samples hold (``stratified_halves`` gives a
    class's single sample to the selection half only, so its evaluation-half accuracy would not be
    measured at all), hence at least 2 samples of each class present, and at least one sample.
    """
    labels = np.asarray(labels)
    if labels.size == 0:
        return "no samples to split into a selection and an evaluation half"
    classes, counts = np.unique(labels, return_counts=True)
    single = classes[counts < 2]
    if single.size:
        return (f"{single.size} of the {classes.size} classes among the {labels.size} samples have a single sample "
                f"(first: class {single[0]}); splitting into two class-stratified halves needs at least 2 samples of "
                "every class")
    return None


def _checked_grid(grid):
    grid = sorted(set(int(g) for g in grid))
    if not grid or grid[0] < 0 or grid[-1] == 0:
        raise ValueError(f"the weight grid must hold non-negative integers, at least one positive; got {grid}")
    return grid


def search_weights(scores, labels, grid, seed=0):
    """Choose fusion weights on one half of the samples and evaluate them on the other half.

    Every combination of ``grid`` values per stream is tried (all-zero and proportional duplicates,
    e.g. 2:2 after 1:1, are skipped). The winner has the best selection-half top-1, then mean-class
    accuracy, then log-likelihood of the true class under the weighted mean of the probabilities.
    Returns ``{"weights", "select", "evaluate"}``: the weights and the metrics on each half.
    Raises ValueError for a bad grid and for samples ``split_problem`` refuses.
    """
    names = sorted(scores)
    grid = _checked_grid(grid)
    problem = split_problem(labels)
    if problem is not None:
        raise ValueError(f"cannot search fusion weights: {problem}")
    select, evaluate = stratified_halves(labels, seed)
    best_key, best = None, None
    for combo in itertools.product(grid, repeat=len(names)):
        if not any(combo) or math.gcd(*combo) != 1:
            continue
        weights = dict(zip(names, combo))
        fused = fuse_scores(scores, weights)
        m = summary_metrics(fused[select], labels[select])
        # a weighted mean of probability vectors is one too: its log-likelihood breaks accuracy ties
        p_true = fused[select, labels[select]] / sum(combo)
        key = (m["top1"], m["mean_class_accuracy"], float(np.mean(np.log(np.maximum(p_true, 1e-12)))))
        if best_key is None or key > best_key:
            best_key, best = key, (weights, m)
    weights, select_metrics = best
    fused = fuse_scores(scores, weights)
    return {
        "weights": weights,
        "select": select_metrics,
        "evaluate": summary_metrics(fused[evaluate], labels[evaluate]),
    }


def split_of(ann_path, split):
    """``(frame_dirs, labels, source)`` of split ``split`` of the annotation pickle ``ann_path``: the
    samples of a PYSKL ``result.pkl`` tested on that split (``source`` names them in messages)."""
    frame_dirs, labels = split_samples(load_annotations(ann_path), split, ann_path)
    return frame_dirs, labels, f"split {split!r} of {ann_path}"


def _read_streams(score_paths, samples=None):
    """Read the streams ``{name: SCORES.pkl}``, checked to list the same samples:
    ``({name: probs (N, K)}, frame_dirs, labels)``.

    ``samples`` (``split_of``'s result) are the samples of the streams without a samples CSV
    (PYSKL's ``result.pkl``); streams with one are read with it, and must agree.
    """
    loaded, sources = {}, {}
    for name, path in score_paths.items():
        csv_path = sibling_paths(path).samples
        if samples is not None and not csv_path.exists():
            loaded[name], sources[name] = read_result(path, *samples), samples[2]
        else:
            loaded[name], sources[name] = read_scores(path), csv_path
    check_same_samples({name: (sources[name], d, y) for name, (_, d, y) in loaded.items()})
    _, frame_dirs, labels = next(iter(loaded.values()))
    return {name: p for name, (p, _, _) in loaded.items()}, frame_dirs, labels


def fuse_files(score_paths, weights, out_json, out_scores=None, scheme=None, samples=None, logits=False):
    """Fuse the streams ``{name: SCORES.pkl}`` with ``{name: weight}``; write the metrics JSON.

    ``logits``: the streams hold clip-averaged logits (MS-G3D's ensemble), not probabilities; only
    the method recorded in the JSON differs.

    With ``out_scores`` the fused scores are also written as a stream (``msg3d.scores.write_scores``:
    the float64 sums as a pickle + ``<stem>_samples.csv``), which plots and a further fusion read
    like any other. ``samples``: see ``_read_streams``.
    Returns the JSON content.
    """
    scores, frame_dirs, labels = _read_streams(score_paths, samples)
    fused = fuse_scores(scores, weights)
    result = {
        "scheme": scheme,
        "method": ("weighted sum of clip-averaged logits (MS-G3D's ensemble)" if logits
                   else "weighted sum of clip-averaged probabilities (PYSKL recipe)"),
        "weights": {name: weights[name] for name in sorted(weights)},
        "streams": {
            name: {"scores": str(score_paths[name]), **summary_metrics(scores[name], labels)}
            for name in sorted(scores)
        },
        "num_classes": int(fused.shape[1]),
        **summary_metrics(fused, labels),
    }
    if out_scores is not None:
        write_scores(out_scores, fused, frame_dirs, labels)
    write_json_atomic(out_json, result)
    return result


SEARCH_METHOD = (
    "weights chosen by grid search on a class-stratified half of the samples (selection half); "
    "top1/top5/mean_class_accuracy are measured on the other half only (evaluation half) and are "
    "not comparable with full-split numbers"
)


def search_files(score_paths, grid, out_json, seed=0, scheme=None, samples=None):
    """Weight search (see ``search_weights``) over the streams ``{name: SCORES.pkl}``; write the JSON.

    Its ``top1``/``top5``/``mean_class_accuracy`` are those of the evaluation half only. Samples
    that ``split_problem`` refuses give a JSON with ``skipped`` (the reason) and ``num_samples`` in
    place of the weights and metrics, not an error. ``samples``: see ``_read_streams``.
    Returns the JSON content.
    """
    grid = _checked_grid(grid)
    scores, _, labels = _read_streams(score_paths, samples)
    result = {
        "scheme": scheme,
        "method": SEARCH_METHOD,
        "grid": grid,
        "seed": seed,
        "streams": {name: {"scores": str(score_paths[name])} for name in sorted(scores)},
        "num_classes": int(scores[next(iter(scores))].shape[1]),
    }
    problem = split_problem(labels)
    if problem is not None:
        result.update(skipped=problem, num_samples=int(len(labels)))
    else:
        found = search_weights(scores, labels, grid, seed)
        result.update(weights=found["weights"], selection=found["select"], **found["evaluate"])
    write_json_atomic(out_json, result)
    return result


def add_arguments(parser):
    parser.add_argument(
        "--scores", nargs="+", required=True, metavar="NAME=SCORES.pkl",
        help="one stream per item: its name and the scores pickle written by `msg3d test` "
        "(the <stem>_samples.csv beside it must exist, unless --ann and --split are given)",
    )
    parser.add_argument(
        "--ann", type=Path, metavar="ANN.pkl",
        help="annotation pickle whose --split gives the samples of streams without a _samples.csv "
        "(PYSKL's result.pkl: the split's annotations in annotation order)",
    )
    parser.add_argument("--split", metavar="NAME", help="the split the scores belong to, e.g. xsub_val (with --ann)")
    parser.add_argument(
        "--weights-json", metavar="JSON",
        help='fusion weights as a JSON object, e.g. \'{"j": 2, "b": 2, "jm": 1, "bm": 1}\' (default: 1 each)',
    )
    parser.add_argument(
        "--search", metavar="W,W,...",
        help="instead of fixed weights, choose them from this integer grid (e.g. 0,1,2,3) on half of the "
        "samples and report the other half only",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the half split for --search (default 0)")
    parser.add_argument("--logits", action="store_true",
                        help="the streams are clip-averaged logits (`msg3d test --logits`): MS-G3D's ensemble, "
                        "which sums the streams' raw scores")
    parser.add_argument("--scheme", help="name recorded in the JSON (e.g. 2s, 4s)")
    parser.add_argument("--out", required=True, type=Path, help="metrics JSON to write")
    parser.add_argument("--out-scores", type=Path, help="also write the fused scores pickle (+ _samples.csv)")


def run(args):
    import json
    import sys

    paths = parse_named_paths(args.scores, "--scores")
    if (args.ann is None) != (args.split is None):
        raise ValueError("--ann and --split go together: the annotation pickle and the split the scores belong to")
    samples = split_of(args.ann, args.split) if args.ann is not None else None
    if args.search is not None:
        if args.weights_json or args.out_scores or args.logits:
            raise ValueError("--search chooses the weights itself from probabilities: give neither --weights-json, "
                             "--out-scores nor --logits")
        try:
            grid = [int(g) for g in args.search.split(",")]
        except ValueError:
            raise ValueError(f"--search expects comma-separated integers, got {args.search!r}") from None
        result = search_files(paths, grid, args.out, seed=args.seed, scheme=args.scheme, samples=samples)
        if "skipped" in result:
            print(f"fusion weight search skipped ({args.out} says why): {result['skipped']}", file=sys.stderr)
            return 0
    else:
        weights = {name: 1 for name in paths}
        if args.weights_json:
            weights = json.loads(args.weights_json)
            if not isinstance(weights, dict):
                raise ValueError(f"--weights-json must be a JSON object, got {args.weights_json!r}")
        result = fuse_files(paths, weights, args.out, args.out_scores, scheme=args.scheme, samples=samples,
                            logits=args.logits)
    print(
        f"fused {', '.join(f'{n}:{w}' for n, w in result['weights'].items())} on {result['num_samples']} samples: "
        f"top1 {100 * result['top1']:.2f}  top5 {100 * result['top5']:.2f}  "
        f"mean-class {100 * result['mean_class_accuracy']:.2f}",
        file=sys.stderr,
    )
    return 0
