"""Training throughput and peak memory: msg3d's training step (fp32 / bf16 / bf16 + torch.compile)
against a PYSKL-style fp32 baseline, measured in the same run.

One training step = forward + cross-entropy + backward + SGD (Nesterov, weight decay) on a batch
already on the device, at PYSKL's training shape (batch 16 per GPU, T = 100, 2 persons, NTU
layout, 60 classes). The baseline is the PYSKL-layout model of ``benchmarks/model_speed.py``
(PYSKL's forward op for op, residual adds made out of place so that it trains) in fp32, as PYSKL
trains. Every configuration runs in its own process, so compile caches and memory peaks do not
leak between rows; peak memory is ``torch.cuda.max_memory_allocated`` on CUDA and the process's
peak RSS (the whole process, libraries included) on CPU.

With ``--engine N`` it also runs ``msg3d train`` itself (data loader, logging, checkpoints) for
one epoch of N synthetic samples per configuration and reports the loop's samples/s from
``epochs.csv``.

    python benchmarks/train_speed.py                       # CPU, and CUDA when present
    python benchmarks/train_speed.py --device cuda --iters 20 --engine 2000
    python benchmarks/train_speed.py --device cpu --batch 4 --frames 50 --iters 1   # quick check

Goal (issue 4): on a GPU, msg3d bf16 + compile >= 3x the PYSKL-style fp32 baseline.
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
CONFIGS = [  # (name, implementation, amp, compile)
    ("PYSKL-style fp32 (baseline)", "pyskl", None, False),
    ("msg3d fp32", "msg3d", None, False),
    ("msg3d bf16", "msg3d", "bf16", False),
    ("msg3d bf16 + compile", "msg3d", "bf16", True),
]


def measure_step(impl, amp, compile_model, device_name, batch, frames, iters, warmup, threads):
    """Seconds per training step (median of ``iters`` after ``warmup``) and peak memory in MiB."""
    import torch
    import torch.nn.functional as F

    from msg3d.engine.device import autocast
    from msg3d.engine.schedule import build_optimizer
    from msg3d.models import build_model

    if threads:
        torch.set_num_threads(threads)
    device = torch.device(device_name)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    torch.manual_seed(0)
    sys.path.insert(0, str(HERE))
    from model_speed import PysklRecognizer, sync_device, median_seconds

    if impl == "pyskl":
        model = PysklRecognizer(60, "nturgb+d")
    else:
        model = build_model(60, layout="nturgb+d")
    model.to(device).train()
    if compile_model:
        model.compile()
    optimizer = build_optimizer(model, lr=0.0125, momentum=0.9, nesterov=True, weight_decay=5e-4)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 2, frames, 25, 3, generator=gen).to(device)
    labels = torch.randint(0, 60, (batch,), generator=gen).to(device)

    def step():
        with autocast(device, amp):
            logits = model(x)
        loss = F.cross_entropy(logits.float(), labels)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    start = time.perf_counter()
    for _ in range(warmup):
        step()
    sync_device(device)
    warmup_s = time.perf_counter() - start
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    seconds = median_seconds(step, iters, device)
    if device.type == "cuda":
        peak_mb = torch.cuda.max_memory_allocated(device) / 2**20
    else:
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    return {"seconds": seconds, "peak_mb": peak_mb, "warmup_s": warmup_s}


def measure_engine(amp, compile_model, device_name, batch, frames, samples, threads):
    """samples/s of one epoch of ``msg3d train`` on a synthetic store of ``samples`` samples."""
    import numpy as np
    import torch

    from msg3d.data.store import StoreWriter
    from msg3d.engine.train import train

    if threads:
        torch.set_num_threads(threads)
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        store, names = Path(tmp) / "store", [f"S{i:06d}" for i in range(samples)]
        with StoreWriter(store, num_joints=25, channels=3) as writer:
            for i, name in enumerate(names):
                frames_i = int(rng.integers(frames // 2, 3 * frames))
                writer.append(name, i % 60, rng.standard_normal((1 + i % 2, frames_i, 25, 3), dtype=np.float32))
            val = names[: max(1, samples // 10)]
            writer.finish(splits={"bench_train": names, "bench_val": val},
                          meta={"layout": "nturgb+d", "modality": "j", "num_classes": 60})
        hp = {"epochs": 1, "repeat": 1, "batch_size": batch, "clip_len": frames, "log_interval": 10**9}
        train(store, "bench", Path(tmp) / "run", hp, seed=0, device=device_name, amp=amp,
              compile_model=compile_model, progress_seconds=1e9)
        with open(Path(tmp) / "run" / "epochs.csv") as f:
            row = f.read().splitlines()[1].split(",")
    return {"samples_per_s": float(row[-1])}


def run_worker(args):
    cfg = json.loads(args.worker)
    if cfg["kind"] == "step":
        result = measure_step(cfg["impl"], cfg["amp"], cfg["compile"], cfg["device"], args.batch, args.frames,
                              args.iters, args.warmup, args.threads)
    else:
        result = measure_engine(cfg["amp"], cfg["compile"], cfg["device"], args.batch, args.frames, args.engine,
                                args.threads)
    print("RESULT " + json.dumps(result), flush=True)


def spawn(args, cfg):
    cmd = [sys.executable, __file__, "--worker", json.dumps(cfg), "--batch", str(args.batch),
           "--frames", str(args.frames), "--iters", str(args.iters), "--warmup", str(args.warmup),
           "--engine", str(args.engine)]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, PYTHONWARNINGS="ignore"))
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
    return {"error": " | ".join(tail) or f"exit code {proc.returncode}"}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", nargs="+", default=None, help="cpu and/or cuda (default: cpu + cuda if present)")
    parser.add_argument("--batch", type=int, default=16, help="samples per step (PYSKL: 16 per GPU)")
    parser.add_argument("--frames", type=int, default=100, help="clip length T")
    parser.add_argument("--iters", type=int, default=3, help="timed steps per row (median)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first (compilation happens here)")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (CPU)")
    parser.add_argument("--engine", type=int, default=0,
                        help="also time `msg3d train` for one epoch of this many synthetic samples")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return run_worker(args)

    import torch

    devices = args.device or (["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"])
    for device in devices:
        threads = args.threads or torch.get_num_threads()
        name = torch.cuda.get_device_name(0) if device == "cuda" else f"CPU, {threads} threads"
        print(f"\n{device} ({name}): training step, batch {args.batch}, T={args.frames}, NTU 25 joints, 60 classes, "
              f"median of {args.iters} after {args.warmup} warm-up")
        mem = "peak alloc MiB" if device == "cuda" else "peak RSS MiB"
        header = f"{'configuration':<30}{'s/step':>9}{'samples/s':>11}{'vs baseline':>13}{mem:>16}{'warm-up s':>11}"
        if args.engine:
            header += f"{'engine samples/s':>18}"
        print(header)
        print("-" * len(header))
        base = None
        for label, impl, amp, compile_model in CONFIGS:
            res = spawn(args, {"kind": "step", "impl": impl, "amp": amp, "compile": compile_model, "device": device})
            if "error" in res:
                print(f"{label:<30}  failed: {res['error']}", flush=True)
                continue
            rate = args.batch / res["seconds"]
            base = rate if impl == "pyskl" else base
            ratio = f"{rate / base:.2f}x" if base else "-"
            row = (f"{label:<30}{res['seconds']:>9.3f}{rate:>11.2f}{ratio:>13}{res['peak_mb']:>16.0f}"
                   f"{res['warmup_s']:>11.1f}")
            if args.engine and impl == "msg3d":
                eng = spawn(args, {"kind": "engine", "amp": amp, "compile": compile_model, "device": device})
                row += f"{eng['samples_per_s']:>18.2f}" if "error" not in eng else f"  engine failed: {eng['error']}"
            print(row, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
