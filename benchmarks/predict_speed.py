"""Speed of `msg3d predict` on this machine's CPU, through PyTorch and through onnxruntime.

Measured, for PYSKL's full-size model (``--base-channels 96``, 13 GCN / 6 G3D scales, 60 classes;
random weights saved as a PYSKL-style checkpoint, so its facts come from ``--layout nturgb+d
--modality j`` and PYSKL's defaults: 10 test clips of 100 frames per prediction):

1. cold: one ``.skeleton`` file end to end, ``python -m msg3d predict ... FILE`` as a new process
   (interpreter start, imports, model loading, conversion, the 10 clips); predictions/s = 1 / its
   wall time, median of ``--repeats`` runs;
2. warm: the same file predicted again and again in one process whose models are loaded;
3. folder: one ``msg3d predict ... FOLDER`` process over ``--files`` (100) recordings;
4. the network alone: clips/s of PyTorch eval (``no_grad``) and of onnxruntime at batch 1 and 16
   (clips of 100 frames), median of ``--repeats`` timed runs after one warm-up.

The recordings are ``msg3d.data.demo`` performances (60-120 frames, some with a spurious body that
the conversion drops). The ONNX model is exported once with ``msg3d export-onnx`` (its time is
printed too). Threads: torch's and onnxruntime's defaults (all cores). The 1-minute load average
is printed before and after, since other work on the machine changes every number.

    python benchmarks/predict_speed.py                      # full size, 100 files, both backends
    python benchmarks/predict_speed.py --base-channels 24 --files 20 --repeats 2   # quick look
"""

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from msg3d.data.demo import recording, sample_name
from msg3d.data.ntu_raw import format_skeleton_file
from msg3d.deploy.backends import OnnxBackend
from msg3d.deploy.onnx_export import export_onnx
from msg3d.deploy.predict import load_streams, predictions
from msg3d.models import build_model

FACTS = ["--layout", "nturgb+d", "--modality", "j"]


def write_recordings(folder, count):
    """``count`` demo recordings of 60-120 frames (five actions, one camera); their paths, sorted."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        action, performer = 1 + i % 5, 1 + i // 5
        frames = 60 + (7 * i) % 61
        path = folder / f"{sample_name(1, 1, performer, 1, action)}.skeleton"
        path.write_text(format_skeleton_file(recording(0, action, performer, 1, 1, frames, 1)))
        paths.append(path)
    return sorted(paths)


def timed_process(args):
    """Wall seconds of ``python -m msg3d ARGS`` (which must succeed)."""
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "msg3d", *map(str, args)], check=True, capture_output=True)
    return time.perf_counter() - start


def median_seconds(function, repeats):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def network_rates(model, session, frames, batch, repeats):
    """Clips/s of PyTorch eval and of onnxruntime for a batch of random clips (one warm-up each)."""
    x = torch.randn(batch, 2, frames, 25, 3, generator=torch.Generator().manual_seed(0))
    rates = {}

    def run_torch():
        with torch.no_grad():
            model(x)

    def run_onnx():
        session.logits(x.numpy())

    for name, run in (("pytorch", run_torch), ("onnxruntime", run_onnx)):
        run()
        rates[name] = batch / median_seconds(run, repeats)
    return rates


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base-channels", type=int, default=96, help="model width (default 96: PYSKL's)")
    parser.add_argument("--files", type=int, default=100, help="recordings in the folder run (default 100)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per measurement (median; default 3)")
    parser.add_argument("--work", type=Path, default=None, help="working folder (default: a temporary one)")
    args = parser.parse_args()

    work = args.work or Path(tempfile.mkdtemp(prefix="predict_speed_"))
    print(f"load average (1 min) before: {os.getloadavg()[0]:.2f}; torch threads {torch.get_num_threads()}; "
          f"{os.cpu_count()} CPUs; work folder {work}")
    files = write_recordings(work / "recordings", args.files)
    torch.manual_seed(0)
    model = build_model(60, layout="nturgb+d", base_channels=args.base_channels).eval()
    checkpoint = work / "model.pth"
    torch.save({"state_dict": model.state_dict()}, checkpoint)
    hparams = ["--hparams-json", f'{{"model": {{"base_channels": {args.base_channels}}}}}']
    start = time.perf_counter()
    onnx_file = work / "model.onnx"
    export_onnx(checkpoint, onnx_file, layout="nturgb+d", modality="j",
                hparams={"model": {"base_channels": args.base_channels}})
    print(f"export-onnx (export + self-check): {time.perf_counter() - start:.1f} s")

    rows = []
    for backend, models in (("pytorch", ["--checkpoint", checkpoint, *FACTS, *hparams]),
                            ("onnxruntime", ["--onnx", onnx_file])):
        cold = statistics.median(timed_process(["predict", *models, files[0]]) for _ in range(args.repeats))
        if backend == "pytorch":
            streams = load_streams([checkpoint], layout="nturgb+d", modality=["j"],
                                   hparams={"model": {"base_channels": args.base_channels}})
        else:
            streams = load_streams(onnx=[onnx_file])
        warm = median_seconds(lambda: list(predictions(streams, [files[0]])), args.repeats)
        folder = timed_process(["predict", *models, files[0].parent])
        rows.append((backend, 1 / cold, 1 / warm, args.files / folder))
    print("\npredictions/s (10 clips x 100 frames each)")
    print("| backend | one file, cold (new process) | one file, warm | folder of %d files (one process) |" % args.files)
    print("| --- | --- | --- | --- |")
    for backend, cold, warm, folder in rows:
        print(f"| {backend} | {cold:.3f} | {warm:.3f} | {folder:.3f} |")

    session = OnnxBackend(onnx_file)
    print("\nnetwork alone, clips/s (100 frames)")
    print("| batch | PyTorch eval | onnxruntime | ratio |")
    print("| --- | --- | --- | --- |")
    for batch in (1, 16):
        rates = network_rates(model, session, 100, batch, args.repeats)
        print(f"| {batch} | {rates['pytorch']:.2f} | {rates['onnxruntime']:.2f} | "
              f"{rates['onnxruntime'] / rates['pytorch']:.2f} |")
    print(f"\nload average (1 min) after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
