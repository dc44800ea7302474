"""Speed of ``convert-ntu`` against a straightforward port of PYSKL's per-line converter.

Generates realistic synthetic ``.skeleton`` files (70-130 frames, one person, a second person in
some files, short noisy extra tracks in others, full 12-field Kinect-formatted lines, ~300 KB),
or reads a folder of real ones (``--raw-dir``), then times, best of ``--repeat`` runs:

* the PYSKL port (written below: ``tools/data/ntu_preproc.py``'s line-by-line parse and body
  selection) in this process, and as a subprocess that also starts Python and writes the pickle;
* ``msg3d.data.ntu_raw.convert_file`` in this process;
* the full CLI ``python -m msg3d convert-ntu ... --jobs 1`` and ``--jobs 2`` (start-up included).

It also checks that both converters give the same arrays for every file.

    python benchmarks/convert_speed.py [--files 200] [--repeat 3] [--raw-dir /work/shared/realdata/ntu]

Goals: >= 2.5x the port's files/s with ``--jobs 1`` (start-up included), >= 1.8x from 2 jobs
(use ``--files 1000`` or more, so that start-up does not dominate). Timings on a shared machine are
noisy: compare rows of the same run; the CPU seconds (this process and its children) show the work
done whatever the load.
"""

import argparse
import os
import pickle
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from msg3d.data import ntu_raw
from msg3d.data.splits import official_missing

# ---------------------------------------------------------------------------------------------
# PYSKL's converter, ported line for line in behaviour (only for timing and cross-checking)


def port_parse(path):
    lines = open(path).read().split("\n")
    while lines and lines[-1] == "":
        lines.pop()
    num_frames, idx = int(lines[0]), 1
    bodies, fidx = {}, 0
    for _ in range(num_frames):
        num_bodies = int(lines[idx])
        idx += 1
        if num_bodies == 0:
            continue
        for _ in range(num_bodies):
            body_id = int(lines[idx].split()[0])
            bodies.setdefault(body_id, {"kpt": [], "start": fidx})
            assert int(lines[idx + 1]) == 25
            idx += 2
            joints = np.zeros((25, 3), dtype=np.float32)
            for j in range(25):
                joints[j] = np.array(lines[idx].split()[:3], dtype=np.float32)
                idx += 1
            bodies[body_id]["kpt"].append(joints)
        fidx += 1
    for body in bodies.values():
        body["motion"] = np.sum(np.var(np.vstack(body["kpt"]), axis=0))
        body["kpt"] = np.stack(body["kpt"])
    assert idx == len(lines)
    return list(bodies.values())


def port_spread_denoise(bodies):
    kept = []
    for body in bodies:
        kpt = body["kpt"]
        valid = [i for i in range(len(kpt)) if np.ptp(kpt[i, :, 0]) <= 0.8 * np.ptp(kpt[i, :, 1])]
        if len(valid) < len(kpt):
            if 1 - len(valid) / len(kpt) >= 0.69754:
                continue
            body = dict(body, motion=min(body["motion"], np.sum(np.var(kpt[valid].reshape(-1, 3), axis=0))))
        kept.append(body)
    assert kept
    return sorted(kept, key=lambda b: -b["motion"])


def port_select(bodies):
    bodies = sorted(bodies, key=lambda b: -b["motion"])
    if len(bodies) == 1:
        return bodies[0]["kpt"][None]
    bodies = [b for b in bodies if len(b["kpt"]) > 11]
    if len(bodies) == 1:
        return bodies[0]["kpt"][None]
    bodies = port_spread_denoise(bodies)
    if len(bodies) == 1:
        return bodies[0]["kpt"][None]
    length = max(b["start"] + len(b["kpt"]) for b in bodies)
    out = np.zeros((2, length, 25, 3), np.float32)
    s1, e1 = bodies[0]["start"], bodies[0]["start"] + len(bodies[0]["kpt"])
    s2 = e2 = 0
    out[0, s1:e1] = bodies[0]["kpt"]
    for b in bodies[1:]:
        s, e = b["start"], b["start"] + len(b["kpt"])
        if max(s1, s) >= min(e1, e):
            out[0, s:e] = b["kpt"]
            s1, e1 = min(s, s1), max(e, e1)
        elif max(s2, s) >= min(e2, e):
            out[1, s:e] = b["kpt"]
            s2, e2 = min(s, s2), max(e, e2)
    s, e = 0, length
    while np.sum(np.abs(out[:, s])) < 1e-3:
        s += 1
    while np.sum(np.abs(out[:, e - 1])) < 1e-3:
        e -= 1
    out = out[:, s:e]
    if np.sum(np.abs(out[0, 0, 1])) < 1e-3 and np.sum(np.abs(out[1, 0, 1])) > 1e-3:
        out = out[::-1]
    return out


def port_convert(path):
    return port_select(port_parse(path)).astype(np.float16)


def port_run(raw_dir, out):
    """What PYSKL's script does end to end (single process): convert every file, dump a pickle."""
    annotations = []
    for path in sorted(Path(raw_dir).glob("*.skeleton")):
        keypoint = port_convert(path)
        annotations.append(
            {
                "frame_dir": path.stem,
                "label": int(path.stem[-3:]) - 1,
                "keypoint": keypoint,
                "total_frames": keypoint.shape[1],
            }
        )
    with open(out, "wb") as f:
        pickle.dump({"annotations": annotations}, f)


# ---------------------------------------------------------------------------------------------
# realistic synthetic files

# a standing person (metres, spine base at the origin), NTU joint order
# fmt: off
STANDING = np.array([
    (0, 0), (0, 0.3), (0, 0.55), (0, 0.68), (-0.18, 0.5), (-0.22, 0.25), (-0.24, 0.02), (-0.25, -0.05),
    (0.18, 0.5), (0.22, 0.25), (0.24, 0.02), (0.25, -0.05), (-0.09, -0.02), (-0.1, -0.45), (-0.1, -0.85),
    (-0.1, -0.9), (0.09, -0.02), (0.1, -0.45), (0.1, -0.85), (0.1, -0.9), (0, 0.5), (-0.26, -0.12),
    (-0.23, -0.08), (0.26, -0.12), (0.23, -0.08),
])
# fmt: on


def person(rng, n, x0):
    """(n, 25, 3): a person at x0 that walks a little, swings the arms and jitters like Kinect."""
    t = np.arange(n)[:, None]
    joints = np.zeros((n, 25, 3))
    joints[..., 0] = STANDING[:, 0] + x0 + 0.003 * t * rng.uniform(-1, 1)
    joints[..., 1] = STANDING[:, 1] + 0.2
    joints[..., 2] = 3.0 + rng.uniform(-0.5, 0.5) + 0.02 * np.sin(t / 7)
    arms = [5, 6, 7, 9, 10, 11, 21, 22, 23, 24]
    joints[:, arms, 1] += 0.15 * np.sin(t / rng.uniform(4, 12) + rng.uniform(0, 6))
    return joints + rng.normal(0, 0.005, joints.shape)


def noise_track(rng, n):
    """(n, 25, 3): a short spurious track, often smeared sideways (implausible for PYSKL)."""
    spread = rng.choice([0.3, 1.5])
    centre = rng.uniform([-1.5, -0.5, 2.0], [1.5, 0.5, 4.5])
    return centre + rng.normal(0, 1, (n, 25, 3)) * [spread, 0.3, 0.2]


def synthetic_file(rng):
    n = int(rng.integers(70, 131))
    first_id = 72057594037927936 + int(rng.integers(1000, 60000))
    tracks = [(first_id, range(n), person(rng, n, rng.uniform(-0.6, 0.2)))]
    if rng.random() < 0.15:  # a two-person action
        tracks.append((first_id + 1, range(n), person(rng, n, rng.uniform(0.6, 1.2))))
    if rng.random() < 0.3:  # a noisy extra track for part of the clip
        length = int(rng.integers(5, 31))
        start = int(rng.integers(0, n - length))
        tracks.append((first_id + 7, range(start, start + length), noise_track(rng, length)))
    frames = [[] for _ in range(n)]
    for body_id, indices, joints in tracks:
        for f, j in zip(indices, joints):
            frames[f].append((body_id, j))
    return ntu_raw.format_skeleton_file(frames, rng=rng).replace("\n", "\r\n").encode()  # Kinect: CRLF


def synthetic_names(count):
    missing = official_missing("ntu120")
    names = (
        f"S{s:03d}C{c:03d}P{p:03d}R{r:03d}A{a:03d}"
        for s in range(1, 33) for c in (1, 2, 3) for p in range(1, 107) for r in (1, 2) for a in range(1, 121)  # fmt: skip
    )
    return [name for _, name in zip(range(count), (n for n in names if n not in missing))]


def generate(folder, count, seed):
    rng = np.random.default_rng(seed)
    for name in synthetic_names(count):
        (folder / f"{name}.skeleton").write_bytes(synthetic_file(rng))


# ---------------------------------------------------------------------------------------------
# timing


def _cpu_seconds():
    """CPU time of this process and of its finished children (subprocesses and their workers)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def best_of(repeat, run):
    """(wall seconds, CPU seconds) of the fastest of ``repeat`` runs."""
    runs = []
    for _ in range(repeat):
        cpu, start = _cpu_seconds(), time.perf_counter()
        run()
        runs.append((time.perf_counter() - start, _cpu_seconds() - cpu))
    return min(runs)


def subprocess_run(args):
    subprocess.run([sys.executable, *args], check=True, capture_output=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=200, help="synthetic files to generate")
    parser.add_argument("--repeat", type=int, default=3, help="runs per measurement (the best counts)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--raw-dir", type=Path, help="time these .skeleton files instead of synthetic ones")
    parser.add_argument("--port-run", nargs=2, metavar=("RAW_DIR", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.port_run:
        port_run(*args.port_run)
        return

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if args.raw_dir:
            raw, source = args.raw_dir, f"files from {args.raw_dir}"
        else:
            raw = tmp / "raw"
            raw.mkdir()
            generate(raw, args.files, args.seed)
            source = "synthetic files"
        paths = sorted(raw.glob("*.skeleton"))
        sizes = [p.stat().st_size for p in paths]
        bodies = [ntu_raw.parse_skeleton(p.read_bytes()) for p in paths]
        frames = [len({b.start + i for b in bs for i in range(len(b.keypoint))}) for bs in bodies]
        body_frames = sum(len(b.keypoint) for bs in bodies for b in bs)

        same = all(np.array_equal(ntu_raw.convert_file(p), port_convert(p)) for p in paths)
        rows = []  # (converter, jobs, seconds)
        rows.append(("PYSKL port, in-process", 1, best_of(args.repeat, lambda: [port_convert(p) for p in paths])))
        rows.append(
            (
                "ours, in-process (convert_file)",
                1,
                best_of(args.repeat, lambda: [ntu_raw.convert_file(p) for p in paths]),
            )
        )
        port_cmd = [__file__, "--port-run", str(raw), str(tmp / "port.pkl")]
        rows.append(("PYSKL port, subprocess with start-up", 1, best_of(args.repeat, lambda: subprocess_run(port_cmd))))
        for jobs in (1, 2):
            cli = [
                "-m",
                "msg3d",
                "convert-ntu",
                str(raw),
                str(tmp / f"out{jobs}" / "ntu120.pkl"),
                "--dataset",
                "ntu120",
                "--jobs",
                str(jobs),
            ]
            rows.append(("ours, CLI with start-up", jobs, best_of(args.repeat, lambda: subprocess_run(cli))))

    n = len(paths)
    print(
        f"convert-ntu speed: {n} {source}: {np.mean(frames):.0f} frames, {body_frames / sum(frames):.2f} bodies per "
        f"frame, {np.mean(sizes) / 1e3:.0f} KB on average; best of {args.repeat}; "
        f"{len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count()} cores"
    )
    print(f"same arrays as the PYSKL port for every file: {'yes' if same else 'NO'}")
    print(f"| {'converter':<38} | jobs | seconds | files/s | vs port (same mode) | CPU s | CPU ms/file |")
    print(f"|{'-' * 40}|------|---------|---------|---------------------|-------|-------------|")
    base = {"in-process": rows[0][2][0], "start-up": rows[2][2][0]}
    for name, jobs, (seconds, cpu) in rows:
        mode = "in-process" if "in-process" in name else "start-up"
        print(
            f"| {name:<38} | {jobs:>4} | {seconds:7.3f} | {n / seconds:7.0f} | {base[mode] / seconds:18.2f}x "
            f"| {cpu:5.2f} | {cpu / n * 1e3:11.2f} |"
        )
    (wall1, cpu1), (wall2, cpu2) = rows[3][2], rows[4][2]
    print(f"CLI from 1 to 2 jobs: {wall1 / wall2:.2f}x faster (wall; needs 2 idle cores), CPU {cpu2 / cpu1:.2f}x")


if __name__ == "__main__":
    main()
