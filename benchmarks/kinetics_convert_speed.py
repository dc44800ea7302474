"""Speed and memory of ``convert-kinetics`` on a synthetic Kinetics-skeleton release.

Generates a release of about ``--clips`` clips with ``msg3d.data.kinetics_demo`` (one JSON file per
clip, 90-299 frames, one or two people, a crowd in some), then converts it, each run in a fresh
Python process that reports its wall time and peak resident memory (``resource.getrusage``: its
own ``ru_maxrss`` and that of its children, the worker processes):

* ``convert_kinetics`` with ``--jobs 1`` and ``--jobs 2`` (the pickle streamed to disk);
* a baseline that holds every annotation in memory and writes the pickle with one ``pickle.dump``,
  as a converter without streaming would: the difference in peak memory is what the streaming
  saves (it grows with the release: ~130 KB per clip, ~31 GB for the full one).

    python benchmarks/kinetics_convert_speed.py [--clips 3000] [--repeat 1]

Timings on a shared machine are noisy; the CPU seconds show the work done whatever the load.
"""

import argparse
import json
import os
import pickle
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from msg3d.data import kinetics_demo, kinetics_raw


def measure(raw, out, jobs):
    """Run in a child process: convert, then print wall/CPU seconds and peak RSS as JSON."""
    start = time.perf_counter()
    if jobs == "baseline":
        paths = sorted(raw.glob("kinetics_*/*.json"))
        annotations = [kinetics_raw.read_clip(path) for path in paths]
        out.parent.mkdir(parents=True, exist_ok=True)
        with open(out, "wb") as f:
            pickle.dump({"annotations": annotations}, f, protocol=pickle.HIGHEST_PROTOCOL)
    else:
        kinetics_raw.convert_kinetics(raw, out, jobs=int(jobs))
    seconds = time.perf_counter() - start
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    print(json.dumps({
        "seconds": seconds,
        "cpu": own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime,
        "rss_self_mb": own.ru_maxrss / 1024,  # Linux: kilobytes
        "rss_children_mb": children.ru_maxrss / 1024,
    }))


def run_child(raw, out, jobs):
    done = subprocess.run([sys.executable, __file__, "--measure", str(raw), str(out), str(jobs)],
                          capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"the run with jobs={jobs} failed:\n{done.stderr}")
    return json.loads(done.stdout.splitlines()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clips", type=int, default=3000, help="clips to generate (about)")
    parser.add_argument("--classes", type=int, default=5)
    parser.add_argument("--repeat", type=int, default=1, help="runs per measurement (the fastest counts)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--measure", nargs=3, metavar=("RAW", "OUT", "JOBS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        raw, out, jobs = args.measure
        measure(Path(raw), Path(out), jobs)
        return

    per_class = max(1, args.clips // args.classes)
    train, val = max(1, round(per_class * 0.8)), max(1, per_class - round(per_class * 0.8))
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "raw"
        start = time.perf_counter()
        kinetics_demo.write_kinetics_release(raw, args.classes, train, val, args.seed)
        generated = time.perf_counter() - start
        paths = sorted(raw.glob("kinetics_*/*.json"))
        size = sum(p.stat().st_size for p in paths)
        clips = len(paths) - 2  # the two has_skeleton false clips are not converted
        rows = []
        for jobs in ("1", "2", "baseline"):
            out = Path(tmp) / f"out-{jobs}" / "k.pkl"
            runs = [run_child(raw, out, jobs) for _ in range(args.repeat)]
            rows.append((jobs, min(runs, key=lambda r: r["seconds"]), out.stat().st_size))
            out.unlink()

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(f"convert-kinetics speed: {clips} synthetic clips ({train} train + {val} val per class, {args.classes} "
          f"classes), {size / len(paths) / 1e3:.0f} KB of JSON per clip on average, generated in {generated:.1f} s; "
          f"best of {args.repeat}; {cores} cores")
    print("| converter | jobs | seconds | clips/s | CPU s | output MB | peak RSS self MB | peak RSS child MB |")
    print("|---|---|---|---|---|---|---|---|")
    for jobs, r, out_size in rows:
        name = "baseline: all in memory, one pickle.dump" if jobs == "baseline" else "convert_kinetics (streamed)"
        print(f"| {name} | {1 if jobs == 'baseline' else jobs} | {r['seconds']:.2f} | {clips / r['seconds']:.0f} "
              f"| {r['cpu']:.2f} | {out_size / 1e6:.0f} | {r['rss_self_mb']:.0f} | {r['rss_children_mb']:.0f} |")


if __name__ == "__main__":
    main()
