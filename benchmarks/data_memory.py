"""Peak memory of the data stages on full-size synthetic data: the numbers behind the workflow's
``resources: mem_mb`` (workflow/rules/common.smk).

    python benchmarks/data_memory.py derive [--samples 10000] [--persons 2] [--frames T] [--work DIR]
    python benchmarks/data_memory.py convert [--files 1000 6000] [--jobs 2] [--work DIR]
    python benchmarks/data_memory.py kinetics [--clips 1000 4000] [--jobs 2] [--work DIR]
    python benchmarks/data_memory.py demo [--work DIR]

``derive`` writes a synthetic annotation pickle like convert-ntu's (``--samples`` samples of
``--persons`` persons, ``--frames`` frames or T drawn around 100 in 30..300, V=25, C=3, float16;
labels 0..59, NTU60's xsub split names; written with one ``pickle.dump``, as PYSKL's released
pickles are) and runs, each in a fresh process:

* ``msg3d import-pyskl ANN --out COPY``: load, validate, write again;
* ``msg3d derive ANN STORE --layout nturgb+d --modality M`` for each modality: what every derive job
  did before prepared annotations (the whole pickle loaded and validated once per modality);
* ``msg3d derive ANN PREPARED --layout nturgb+d --prepare`` once, then ``msg3d derive PREPARED STORE
  --modality M`` for each modality (the workflow's route), and checks that both routes give the same
  stores, byte for byte.

``convert`` generates realistic ``.skeleton`` files (``benchmarks/convert_speed.py``'s generator,
~300 KB each) and runs ``msg3d convert-ntu RAW OUT --dataset ntu120 --jobs J`` on the first N of
them, for each N of ``--files``: the difference between the sizes shows what memory grows with the
folder. ``kinetics`` does the same for ``msg3d convert-kinetics`` on synthetic releases of about
``--clips`` clips (``msg3d make-kinetics-demo``, 5 classes, 3/4 train, 1/4 val); ``demo`` measures
``msg3d make-demo`` with config/demo.yaml's settings.

Each command's peak resident memory is the peak of the summed RSS of its process and all their
descendants (convert-ntu's workers; pages they share count in each, so the sum is an upper
bound), sampled every 10 ms from /proc (Linux), and the largest single process's own peak (its
``VmHWM``, read at the same times; ``ru_maxrss`` would count the memory this script had when it
started the command). Prints one line per command: its input size, both peaks, and the tree's
peak per MB of input (MB: MiB, as Snakemake's ``input.size_mb``). ``--msg3d DIR`` runs the msg3d package in DIR
instead of this checkout's, e.g. an older version (``git archive HEAD msg3d | tar -x -C DIR``) for
before/after numbers; the prepared route is skipped where that msg3d lacks it. Files are kept in
``--work`` (default: a temporary folder) and reused by later runs.
"""

import argparse
import os
import pickle
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from msg3d.data.modality import MODALITIES

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))  # convert_speed's generator
MB = 1 << 20


def _tree_memory(pid):
    """(summed VmRSS, largest VmHWM) in bytes of ``pid`` and its descendants, from /proc; a process
    that is gone counts 0. VmHWM is a process's own peak RSS since it started its program."""
    total, largest, todo = 0, 0, [pid]
    while todo:
        pid = todo.pop()
        try:
            with open(f"/proc/{pid}/status") as f:
                fields = dict(line.split(":", 1) for line in f if line.startswith(("VmRSS:", "VmHWM:")))
            total += int(fields.get("VmRSS", "0 kB").split()[0]) * 1024
            largest = max(largest, int(fields.get("VmHWM", "0 kB").split()[0]) * 1024)
            for task in os.listdir(f"/proc/{pid}/task"):
                with open(f"/proc/{pid}/task/{task}/children") as f:
                    todo.extend(int(child) for child in f.read().split())
        except (FileNotFoundError, ProcessLookupError):
            pass
    return total, largest


def measure(args, msg3d, interval=0.01):
    """Run ``python -m msg3d ARGS`` with the msg3d package in the folder ``msg3d``; return (seconds,
    peak of the tree's summed RSS, peak RSS of its largest process), sizes in bytes. Raises
    CalledProcessError (with its stderr) if it fails."""
    start = time.perf_counter()
    # run in that folder: `python -m` looks for the package in the working folder first
    proc = subprocess.Popen([sys.executable, "-m", "msg3d", *map(str, args)], cwd=msg3d,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    peak = largest = 0
    while proc.poll() is None:
        total, hwm = _tree_memory(proc.pid)
        peak, largest = max(peak, total), max(largest, hwm)
        time.sleep(interval)
    seconds = time.perf_counter() - start
    stderr = proc.stderr.read().decode()
    if proc.returncode:
        raise subprocess.CalledProcessError(proc.returncode, args, stderr=stderr)
    return seconds, peak, largest


def report(what, input_bytes, result):
    seconds, peak, largest = result
    ratio = f"{peak / input_bytes:5.2f} x input" if input_bytes else "  (no input)"
    print(f"{what:<44} input {input_bytes / MB:8.1f} MB   peak {peak / MB:7.1f} MB (largest process "
          f"{largest / MB:7.1f} MB)   {ratio}   {seconds:6.1f} s", flush=True)


def size(path):
    path = Path(path)
    return path.stat().st_size if path.is_file() else sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def synthetic_annotations(path, num_samples, persons=2, frames=None, seed=0):
    """NTU-shaped annotation pickle: ``persons`` persons, ``frames`` frames (None: T ~ gamma(4, 25)
    in 30..300, mean ~100), float16."""
    rng = np.random.default_rng(seed)
    annotations = []
    for i in range(num_samples):
        length = frames or int(np.clip(rng.gamma(4.0, 25.0), 30, 300))
        keypoint = rng.standard_normal((persons, length, 25, 3), dtype=np.float32).astype(np.float16)
        name = f"S{1 + i // 10000:03d}C001P{i % 10000:05d}R001A{1 + i % 60:03d}"
        annotations.append({"frame_dir": name, "label": i % 60, "keypoint": keypoint, "total_frames": length})
    names = [a["frame_dir"] for a in annotations]
    split = {"xsub_train": names[0::2], "xsub_val": names[1::2]}
    with open(path, "wb") as f:
        pickle.dump({"split": split, "annotations": annotations}, f, protocol=pickle.HIGHEST_PROTOCOL)


def same_stores(a, b):
    """Whether two stores hold the same bytes (index.npz: the same arrays; its zip has a time)."""
    if any((a / n).read_bytes() != (b / n).read_bytes() for n in ("data.npy", "splits.json", "meta.json")):
        return False
    with np.load(a / "index.npz") as x, np.load(b / "index.npz") as y:
        return x.files == y.files and all(np.array_equal(x[k], y[k]) for k in x.files)


def supports_prepare(msg3d):
    usage = subprocess.run([sys.executable, "-m", "msg3d", "derive", "--help"], cwd=msg3d, capture_output=True,
                           text=True).stdout
    return "--prepare" in usage


def run_derive(args, work, msg3d):
    ann = work / f"annotations_{args.samples}_{args.persons}_{args.frames or 'T'}.pkl"
    if not ann.exists():
        synthetic_annotations(ann, args.samples, args.persons, args.frames)
    report("import-pyskl ANN --out COPY", size(ann), measure(["import-pyskl", ann, "--out", work / "copy.pkl"], msg3d))
    for modality in MODALITIES:
        report(f"derive ANN STORE --modality {modality}", size(ann),
               measure(["derive", ann, work / "direct" / modality, "--layout", "nturgb+d", "--modality", modality],
                       msg3d))
    if not supports_prepare(msg3d):
        print("(this msg3d has no derive --prepare)")
        return
    prepared = work / "prepared"
    report("derive ANN PREPARED --prepare", size(ann),
           measure(["derive", ann, prepared, "--layout", "nturgb+d", "--prepare"], msg3d))
    for modality in MODALITIES:
        report(f"derive PREPARED STORE --modality {modality}", size(prepared),
               measure(["derive", prepared, work / "prepared_stores" / modality, "--modality", modality], msg3d))
    same = all(same_stores(work / "direct" / m, work / "prepared_stores" / m) for m in MODALITIES)
    print(f"stores of both routes identical: {same}")


def run_convert(args, work, msg3d):
    from convert_speed import generate, synthetic_names

    raw = work / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    names = synthetic_names(max(args.files))
    if len(list(raw.glob("*.skeleton"))) < len(names):
        generate(raw, len(names), seed=0)
    for count in args.files:
        subset = work / f"raw_{count}"
        if not subset.exists():  # links to the first `count` files
            subset.mkdir()
            for name in names[:count]:
                os.symlink(raw / f"{name}.skeleton", subset / f"{name}.skeleton")
        input_bytes = sum((raw / f"{name}.skeleton").stat().st_size for name in names[:count])
        out = work / f"converted_{count}" / "ntu120.pkl"
        report(f"convert-ntu ({count} files) --jobs {args.jobs}", input_bytes,
               measure(["convert-ntu", subset, out, "--dataset", "ntu120", "--jobs", args.jobs], msg3d))
        print(f"  pickle: {size(out) / MB:.1f} MB")


def run_kinetics(args, work, msg3d):
    for clips in args.clips:
        release = work / f"kinetics_{clips}"
        per_class = max(1, clips // 20)  # 5 classes: 3 train clips for each val clip
        report(f"make-kinetics-demo ({clips} clips)", 0,
               measure(["make-kinetics-demo", release, "--train-per-class", 3 * per_class, "--val-per-class",
                        per_class], msg3d))
        out = work / f"kinetics_{clips}_converted" / "k400.pkl"
        report(f"convert-kinetics ({clips} clips) --jobs {args.jobs}", size(release),
               measure(["convert-kinetics", release, out, "--jobs", args.jobs], msg3d))
        print(f"  pickle: {size(out) / MB:.1f} MB")


def run_demo(args, work, msg3d):
    report("make-demo (config/demo.yaml)", 0,
           measure(["make-demo", work / "demo", "--seed", 0, "--train-subjects", 2, "--val-subjects", 1,
                    "--replications", 1, "--min-frames", 40, "--max-frames", 90], msg3d))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("stage", choices=["derive", "convert", "kinetics", "demo"])
    parser.add_argument("--samples", type=int, default=10000, help="derive: samples of the synthetic pickle")
    parser.add_argument("--persons", type=int, default=2, help="derive: persons per sample")
    parser.add_argument("--frames", type=int, help="derive: frames per sample (default: drawn around 100)")
    parser.add_argument("--files", type=int, nargs="+", default=[1000, 6000], help="convert: folder sizes")
    parser.add_argument("--clips", type=int, nargs="+", default=[1000, 4000], help="kinetics: release sizes")
    parser.add_argument("--jobs", type=int, default=2, help="convert, kinetics: worker processes")
    parser.add_argument("--work", type=Path, help="folder for the data (default: a temporary one)")
    parser.add_argument("--msg3d", type=Path, default=REPO, help="folder holding the msg3d package to run")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        stages = {"derive": run_derive, "convert": run_convert, "kinetics": run_kinetics, "demo": run_demo}
        stages[args.stage](args, work, args.msg3d.resolve())


if __name__ == "__main__":
    main()
