"""Resident memory of a long ``msg3d test``: the main process's RSS curve and its loader workers'.

Builds (once; later runs reuse it from ``--work``) a synthetic NTU-shaped derived store of
``--samples`` samples (``data_speed.build_store``: 1-2 persons, 30-300 frames, 25 joints x 3,
``--classes`` classes, split ``xsub_val``) and a randomly initialised model saved as a PYSKL-style
checkpoint (weights only, so ``--hparams-json`` gives its width), then runs ``python -m msg3d
test`` on it in a subprocess (in ``--work``, so that the msg3d it imports is the installed one or
``--pythonpath``'s, never the current folder's) and samples, every ``--interval`` seconds, the RSS
of that process and of its children (the DataLoader workers): with psutil when it is installed, else ``/proc/PID/status``'s ``VmRSS``.
On Linux the main process's RSS is also split into anonymous memory (``RssAnon``: heap, what the
process owns) and shared/file pages (``RssFile + RssShmem``: the shared-memory batches the workers
hand over, libraries). The test proper is the time the workers are alive.

    python benchmarks/test_memory.py [--samples 10000] [--classes 60] [--num-clips 1]
        [--work /tmp/msg3d_memory] [--max-growth-mb 50] [-- EXTRA msg3d test ARGS, e.g. --amp bf16]

Prints the curve (start / middle / end / max of the main process while the workers run, and the
workers' RSS), the whole run's time, and exits 1 when ``--max-growth-mb`` is given and the main
process's RSS grew more than that from start to end. The model keeps T=100, M=2, V=25, C=3; only
its width is small by default (base_channels 6, 2 GCN scales, 1 G3D scale; ``--model pyskl`` for
PYSKL's), so that 10,000 samples x 1 clip take a few minutes on 2 cores (10 clips, PYSKL's test,
take ten times as long). ``--pythonpath`` runs another copy of the package, e.g. before a change.

Goal: flat. Measured on 2 busy cores (other jobs running), 2 workers: 10,000 samples, narrow, batch
8, 1 clip: +53 MiB (284 -> 337) over 594 s when ``predict`` kept one score array per batch, +5 MiB
(284 -> 289, the two preallocated (10000, 60) outputs filling) over 119 s since it fills one array;
PYSKL's width, 1,000 samples, batch 2: +61 MiB (373 -> 435) before, +4 MiB after. Workers: 178 MiB
(narrow) / 201 MiB (PYSKL's) each, flat in both.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from msg3d.data.store import open_store

sys.path.insert(0, str(Path(__file__).resolve().parent))
from data_speed import build_store, child_pids, proc_status_kb  # noqa: E402

try:
    import psutil
except ImportError:  # /proc is enough on Linux
    psutil = None

MODELS = {"narrow": {"base_channels": 6, "num_gcn_scales": 2, "num_g3d_scales": 1},
          "pyskl": {"base_channels": 96, "num_gcn_scales": 13, "num_g3d_scales": 6}}
CLIP_LEN = 100
SPLIT = "xsub_val"  # the store's one split, which msg3d test --split names as it is


def reuse_or_build_store(work, num_samples, num_classes):
    store_dir = work / f"store_{num_samples}_{num_classes}"
    try:
        store = open_store(store_dir)
        if len(store) == num_samples and store.meta["num_classes"] == num_classes:
            return store_dir, True
    except (FileNotFoundError, ValueError):
        pass
    return build_store(store_dir, num_samples, num_classes=num_classes, split=SPLIT), False


def write_checkpoint(path, num_classes, model_hp):
    """A model's random weights as PYSKL writes a checkpoint (no msg3d config in it)."""
    import torch

    from msg3d.models import build_model

    torch.manual_seed(0)
    model = build_model(num_classes, layout="nturgb+d", in_channels=3, **model_hp)
    torch.save({"meta": {}, "state_dict": model.state_dict()}, path)
    return path


def sample_memory(pid):
    """``(main RSS, main anon, main shared/file, [worker RSS, ...])`` in MiB; anon and shared are 0
    where ``/proc`` does not give them."""
    status = {key: proc_status_kb(pid, key) / 1024 for key in ("VmRSS", "RssAnon", "RssFile", "RssShmem")}
    if psutil is not None:
        try:
            proc = psutil.Process(pid)
            rss = proc.memory_info().rss / 2**20
            workers = []
            for child in proc.children(recursive=True):
                try:
                    workers.append(child.memory_info().rss / 2**20)
                except psutil.NoSuchProcess:
                    pass
        except psutil.NoSuchProcess:
            return 0.0, 0.0, 0.0, []
    else:
        rss = status["VmRSS"]
        workers = [proc_status_kb(c, "VmRSS") / 1024 for c in child_pids(pid)]
    # a worker that has exited but not yet been reaped reads as 0
    return rss, status["RssAnon"], status["RssFile"] + status["RssShmem"], [w for w in workers if w > 0]


def run_test(command, cwd, log_path, interval, env=None):
    """Run ``command`` in folder ``cwd`` (environment ``env``), sampling its memory every ``interval``
    s; ``(return code, seconds, samples)`` with samples ``(t, main RSS, anon, shared, workers)``."""
    samples = []
    start = time.perf_counter()
    with open(log_path, "w") as log:
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=cwd, env=env)
        while proc.poll() is None:
            rss, anon, shared, workers = sample_memory(proc.pid)
            if rss:
                samples.append((time.perf_counter() - start, rss, anon, shared, workers))
            time.sleep(interval)
    return proc.returncode, time.perf_counter() - start, samples


def summarise(samples):
    """The main process's curve while the workers run (the whole run without workers): for start,
    middle and end, ``(t, RSS, anon, shared)`` medians over the first, middle and last tenth of the
    samples (a sample taken mid-batch holds that batch's activations, so single points jitter); the
    single largest sample as max; the worker count and their least and largest RSS; the curve."""
    testing = [s for s in samples if s[4]] or samples
    tenth = max(1, len(testing) // 10)
    middle = (len(testing) - tenth) // 2
    windows = {"start": testing[:tenth], "middle": testing[middle:middle + tenth], "end": testing[-tenth:]}
    report = {phase: tuple(float(np.median([s[k] for s in window])) for k in range(4))
              for phase, window in windows.items()}
    report["max"] = max(samples, key=lambda s: s[1])[:4]
    workers = [w for s in testing for w in s[4]]
    report["workers"] = (len(testing[0][4]), min(workers, default=0.0), max(workers, default=0.0))
    report["curve"] = [(round(s[0]), round(s[1]), round(s[2])) for s in testing]
    return report


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=10000, help="samples in the tested split (default 10000)")
    parser.add_argument("--classes", type=int, choices=(60, 120), default=60)
    parser.add_argument("--num-clips", type=int, default=1, help="test clips per sample (default 1; PYSKL tests 10)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--num-workers", type=int, default=2)
    parser.add_argument("--model", choices=sorted(MODELS), default="narrow",
                        help="narrow (default; base_channels 6) or PYSKL's full width (about 1 sample/s at 10 clips)")
    parser.add_argument("--pythonpath", type=Path, default=None,
                        help="import msg3d from this folder (e.g. an older copy of the package, to compare)")
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between memory samples")
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "msg3d_memory",
                        help="folder for the store (reused when it fits), checkpoint and outputs")
    parser.add_argument("--max-growth-mb", type=float, default=None,
                        help="exit 1 if the main process's RSS grew more than this from start to end")
    parser.add_argument("extra", nargs="*", help="more `msg3d test` arguments (after --)")
    args = parser.parse_args(argv)

    args.work = args.work.resolve()
    args.work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    store, reused = reuse_or_build_store(args.work, args.samples, args.classes)
    print(f"store {store}: {args.samples} samples, {args.classes} classes "
          f"({'reused' if reused else f'built in {time.perf_counter() - t0:.0f} s'})", flush=True)
    model_hp = MODELS[args.model]
    ckpt = write_checkpoint(args.work / f"{args.model}_{args.classes}.pth", args.classes, model_hp)
    out = args.work / "out"
    command = [sys.executable, "-m", "msg3d", "test", "--data", str(store), "--split", SPLIT,
               "--checkpoint", str(ckpt), "--out", str(out / "scores.pkl"), "--logits", str(out / "logits.pkl"),
               "--num-clips", str(args.num_clips), "--batch-size", str(args.batch_size),
               "--num-workers", str(args.num_workers), "--device", "cpu",
               "--hparams-json", json.dumps({"clip_len": CLIP_LEN, "model": model_hp}), *args.extra]
    env = None
    if args.pythonpath is not None:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(args.pythonpath.resolve()),
                                                                        os.environ.get("PYTHONPATH")]))}
    package = subprocess.run([sys.executable, "-c", "import msg3d; print(msg3d.__file__)"], cwd=args.work, env=env,
                             capture_output=True, text=True, check=True).stdout.strip()
    print(f"msg3d test from {Path(package).parent}: {' '.join(command[3:])}", flush=True)
    code, seconds, samples = run_test(command, args.work, args.work / "test.log", args.interval, env)
    tail = (args.work / "test.log").read_text().strip().splitlines()[-1:]
    print(f"msg3d test exited {code} after {seconds:.0f} s: {tail[0] if tail else ''}")
    if code != 0 or not samples:
        print((args.work / "test.log").read_text()[-3000:], file=sys.stderr)
        return 1

    report = summarise(samples)
    print(f"main process RSS, MiB (anon / shared+file), sampled every {args.interval:g} s by "
          f"{'psutil' if psutil else '/proc'}; start, middle, end: medians over a tenth of the test")
    for phase in ("start", "middle", "end", "max"):
        t, rss, anon, shared = report[phase]
        print(f"  {phase:<6} t={t:6.0f} s  {rss:7.0f}  ({anon:.0f} / {shared:.0f})")
    n, low, high = report["workers"]
    print(f"  workers: {n}, RSS {low:.0f}-{high:.0f} MiB each")
    growth = report["end"][1] - report["start"][1]
    print(f"  growth start->end: {growth:+.0f} MiB over {report['end'][0] - report['start'][0]:.0f} s")
    step = max(1, len(report["curve"]) // 20)
    print("  curve (t s, RSS, anon): " + "  ".join(f"{t}:{r}/{a}" for t, r, a in report["curve"][::step]))
    if args.max_growth_mb is not None and growth > args.max_growth_mb:
        print(f"FAIL: the main process grew {growth:.0f} MiB > {args.max_growth_mb:g} MiB", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
