"""One command that checks and measures msg3d on a device: correctness, training and eval throughput
against the PYSKL-layout baseline, data loading, and the goals of issue 12, in one table.

Sections (``--sections``), run in this order; every row is measured under its own guard, so a row
that raises becomes an ``error`` row and the rest still runs:

* ``correctness``: fp32 logits (TF32 off) of the committed PYSKL fixtures (``tests/fixtures/``,
  base_channels 24, input (2, 2, 32, V, 3)) within 1e-4 (the parity tests' tolerance); TF32 within
  1 % and bf16 autocast within 2 % of the fixture's largest |logit|; backward gives every
  parameter a finite gradient (fp32, bf16); the per-sequence CPU order and the batched GPU order of
  ``MSGCN._project_then_aggregate`` agree on the device; logits on the device equal those on the
  CPU; the PYSKL-layout baseline gives msg3d's logits for the same weights; 50 steps of PYSKL's
  optimiser through ``SkeletonDataset`` and the project's train loader on a small learnable store
  (narrow model) bring the loss below half of chance, in fp32 and bf16.
* ``throughput``: samples/s of a training step (forward + cross-entropy + backward + PYSKL's SGD
  step) and of an eval forward (no_grad), T frames, 2 persons, NTU layout, 60 classes, for msg3d
  and the baseline of ``benchmarks/model_speed.py`` side by side (same weights; full size, or
  msg3d's narrow test model with --quick), in fp32 (TF32 off), TF32, bf16 autocast and bf16 +
  ``torch.compile``, at each batch size, with the ratio msg3d / baseline and peak GPU memory
  (``torch.cuda.max_memory_allocated`` over the timed steps). Eager rows run first; compile rows
  run after the data section, as they cost most (a compiled model is reused across batch sizes,
  recompiling as ``msg3d train --compile`` does).
* ``data``: samples/s of ``SkeletonDataset`` (train mode, seeded) through
  ``msg3d.engine.loader.train_loader`` (pinned memory and the host-to-device copy on CUDA), with
  the recipe's worker count and with all but one CPU, against the fastest measured msg3d training
  step (the consumption).
* ``goals``: training and eval >= 3x the baseline at each batch size (msg3d's fastest precision
  against the baseline's faster of fp32 and TF32: PYSKL trains without autocast, and TF32 covers
  PyTorch's default cuDNN setting); data loading >= 2x training consumption. Not judged at
  ``--quick`` sizes (skipped, values still shown).

Every row is on the table before anything runs. Rows that cannot run here are ``skipped:
<reason>``: TF32 off CUDA, device-vs-CPU on the CPU, and with ``--quick`` on the CPU compile and
the bf16 learning run; peak GPU memory is ``-`` off CUDA. ``--budget-s`` bounds the whole run: a
row is only started with time left and is cut off by SIGALRM when it would overrun its own cap or
the budget, and rows not reached are ``skipped: time budget``; SIGTERM ends the run with the table
(exit status 143). The JSON (``--json``) is rewritten after every row, so even a killed run leaves
what it measured. Progress lines go to stderr, the table to stdout.

    python benchmarks/device_check.py --json device_check.json          # CUDA when present, <= ~7.5 min
    python benchmarks/device_check.py --device cpu --quick --json t.json  # tiny sizes, the test suite's run

Exit status: 1 when a row failed or errored, else 0 (goals report, they do not fail the run); the
table and the JSON are written either way.
"""

import argparse
import contextlib
import dataclasses
import gc
import math
import os
import platform
import signal
import sys
import tempfile
import threading
import time
import traceback
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from data_speed import build_store  # noqa: E402
from model_speed import PysklRecognizer, median_seconds, sync_device  # noqa: E402

from msg3d.data.dataset import SkeletonDataset  # noqa: E402
from msg3d.data.store import StoreWriter  # noqa: E402
from msg3d.engine.device import autocast  # noqa: E402
from msg3d.engine.distributed import DistInfo  # noqa: E402
from msg3d.engine.hparams import HParams  # noqa: E402
from msg3d.engine.loader import train_loader  # noqa: E402
from msg3d.engine.progress import peak_memory_mb  # noqa: E402
from msg3d.engine.schedule import build_optimizer, build_schedule  # noqa: E402
from msg3d.fileio import write_json_atomic  # noqa: E402
from msg3d.models import build_model  # noqa: E402
from msg3d.models.gcn import MSGCN  # noqa: E402

FIXTURES = HERE.parent / "tests" / "fixtures"
FIXTURE_FILES = {"ntu": "pyskl_msg3d_ntu_small_ref.pt", "coco": "pyskl_msg3d_coco_small_ref.pt"}
FP32_ATOL = 1e-4  # tests/test_model.py's parity tolerance
# fractions of the fixture's largest |logit| (3.9 ntu, 5.3 coco): bf16 keeps 8 mantissa bits
# (tests/test_model.py's 2 %), TF32 10
RELATIVE_TOLERANCE = {"tf32": 0.01, "bf16": 0.02}
PRECISIONS = {  # name: (TF32 on, autocast mode, torch.compile)
    "fp32": (False, None, False),
    "tf32": (True, None, False),
    "bf16": (False, "bf16", False),
    "bf16+compile": (False, "bf16", True),
}
IMPLS = ("msg3d", "baseline")
MODES = ("train", "eval")
SECTIONS = ("correctness", "throughput", "data")
LAYOUT, NUM_JOINTS, NUM_CLASSES = "nturgb+d", 25, 60
GOAL_SPEEDUP, GOAL_DATA = 3.0, 2.0
# the learning check: a narrow model on a 4-class store (class c lifts joints TRAIN_JOINTS[c]);
# with this lr and batch the last 10 of 50 steps average 0.15 on the CPU, chance is ln 4 = 1.39
TRAIN_STEPS, TRAIN_WIDTHS = 50, {"base_channels": 12, "num_gcn_scales": 3, "num_g3d_scales": 2}
TRAIN_JOINTS = ((6, 7), (10, 11), (14, 15), (18, 19))
TRAIN_LR, TRAIN_BATCH, TRAIN_CLIP_LEN = 0.2, 8, 16
TRAIN_LOSS_LIMIT = 0.5 * math.log(len(TRAIN_JOINTS))  # half of chance
DATA_ITEMS = 200_000  # items per loader epoch: more than a timed window takes
RESERVE_S = 3.0  # budget kept for the table at the end
ROW_CAP_S = {"check": 120.0, "eager": 90.0, "compile": 300.0, "data": 60.0}


@dataclasses.dataclass(frozen=True)
class Sizes:
    """What one run measures: frames T, batch sizes, model widths (build_model keywords), timing."""

    frames: int
    batches: tuple
    widths: dict
    min_iters: int  # timed steps per cell at least (median reported)
    max_iters: int  # and at most
    min_time: float  # seconds of timed steps per cell at least (fewer iterations for slow cells)
    warmup: int  # untimed steps first (cuDNN autotuning, compilation)
    store_samples: int  # samples of the data section's store
    data_time: float  # seconds of timed loading per row


FULL = Sizes(frames=100, batches=(16, 64, 128), widths={}, min_iters=3, max_iters=20, min_time=1.0, warmup=2,
             store_samples=2000, data_time=3.0)
QUICK = Sizes(frames=16, batches=(2, 4), widths=dict(TRAIN_WIDTHS), min_iters=2, max_iters=2, min_time=0.0, warmup=1,
              store_samples=48, data_time=0.5)


# ----------------------------------------------------------------------------------------------
# the table


class Table:
    """Rows in display order, each a dict: ``section``, ``name``, ``status`` (pass / fail / ok /
    skipped / error / pending), ``value``, ``reference``, ``ratio``, ``memory_mib``,
    ``reference_memory_mib``, ``unit``, ``criterion``, ``note``; throughput rows add ``mode``,
    ``precision``, ``batch``. Saved to ``json_path`` (when given) after every finished row."""

    def __init__(self, header, json_path=None):
        self.header = header
        self.rows = []
        self.json_path = json_path
        self.start = time.monotonic()

    def add(self, section, name, unit="", criterion="", **extra):
        row = {"section": section, "name": name, "status": "pending", "value": None, "reference": None,
               "ratio": None, "memory_mib": None, "reference_memory_mib": None, "unit": unit,
               "criterion": criterion, "note": "", **extra}
        self.rows.append(row)
        return row

    def find(self, section, **keys):
        return [r for r in self.rows if r["section"] == section and all(r.get(k) == v for k, v in keys.items())]

    def finished(self, row):
        print(f"[{time.monotonic() - self.start:6.1f} s] {row['section']}: {row['name']}: {result_text(row)}",
              file=sys.stderr, flush=True)
        self.save()

    def failures(self):
        """Rows that failed or errored; goals report, they do not fail the run."""
        return [r for r in self.rows if r["status"] in ("fail", "error") and r["section"] != "goals"]

    def to_json(self):
        return {"header": self.header, "rows": self.rows, "elapsed_s": time.monotonic() - self.start,
                "ok": not self.failures()}

    def save(self):
        if self.json_path is not None:
            write_json_atomic(self.json_path, self.to_json())


def skip(row, reason):
    row["status"], row["note"] = "skipped", reason


def judge(row, passed, note=""):
    row["status"] = "pass" if passed else "fail"
    row["note"] = note


def result_text(row):
    return row["status"] + (f": {row['note']}" if row["note"] else "")


def _number(value, unit):
    if value is None:
        return "-"
    if unit == "samples/s":
        return f"{value:.1f}"
    return f"{value:.3g}"


def format_table(table):
    """The header lines, a legend and one line per row (fixed-width columns, the result last)."""
    lines = [f"{key}: {value}" for key, value in table.header.items()]
    lines.append("value / reference: correctness = measured difference; train, eval = msg3d / baseline "
                 "samples/s; data = loader / training consumption samples/s; ratio = value / reference; "
                 "peak MiB = msg3d / baseline")
    name_width = max([len(r["name"]) for r in table.rows] + [5]) + 2
    criterion_width = max([len(r["criterion"]) for r in table.rows] + [9]) + 2
    cols = (f"{'section':<12}{'check':<{name_width}}{'value':>11}{'reference':>11}{'ratio':>9}{'peak MiB':>14}  "
            f"{'criterion':<{criterion_width}}result")
    lines += [cols, "-" * len(cols)]
    for r in table.rows:
        ratio = "-" if r["ratio"] is None else f"{r['ratio']:.2f}x"
        mem = "-"
        if r["memory_mib"] is not None or r["reference_memory_mib"] is not None:
            mem = "/".join("-" if m is None else f"{m:.0f}" for m in (r["memory_mib"], r["reference_memory_mib"]))
        lines.append(f"{r['section']:<12}{r['name']:<{name_width}}{_number(r['value'], r['unit']):>11}"
                     f"{_number(r['reference'], r['unit']):>11}{ratio:>9}{mem:>14}  "
                     f"{r['criterion']:<{criterion_width}}{result_text(r)}")
    lines.append(f"elapsed {time.monotonic() - table.start:.0f} s; {len(table.failures())} failed or errored rows "
                 f"(goals aside)")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# time budget and guards


class RowTimeout(BaseException):
    """A row ran past its time limit (raised by SIGALRM). A BaseException, so that no ``except
    Exception`` inside torch (compile's fallbacks, say) swallows it."""


class Terminated(BaseException):
    """SIGTERM arrived: stop measuring and write the table (a BaseException, as RowTimeout)."""


class Budget:
    """Seconds left of ``--budget-s``, counted from construction."""

    def __init__(self, seconds):
        self.seconds = seconds
        self.end = time.monotonic() + seconds

    def left(self):
        return self.end - time.monotonic()


def on_main_thread():
    return threading.current_thread() is threading.main_thread()


@contextlib.contextmanager
def time_limit(seconds):
    """Raise ``RowTimeout`` in the main thread after ``seconds`` (SIGALRM; no limit off the main thread)."""
    if not on_main_thread():
        yield
        return

    def expire(signum, frame):
        raise RowTimeout()

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, max(seconds, 0.01))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def error_text(exc):
    """Type and first line of the exception, at most 160 characters (the traceback goes to stderr)."""
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0] if lines else ''}"[:160]


def attempt(budget, kind, fn):
    """``(fn(), None)``, or ``(None, (status, reason))`` when it did not run or did not finish.

    ``fn`` gets ``min(ROW_CAP_S[kind], time left)`` seconds: cut off by the budget it is
    ``skipped``, by its own cap or by an exception it is an ``error``. ``Terminated`` propagates.
    """
    left = budget.left() - RESERVE_S
    if left < 1:
        return None, ("skipped", f"time budget (--budget-s {budget.seconds:g}) spent")
    cap = min(ROW_CAP_S[kind], left)
    try:
        with time_limit(cap):
            return fn(), None
    except RowTimeout:
        if cap < ROW_CAP_S[kind]:
            return None, ("skipped", f"time budget (--budget-s {budget.seconds:g}) ran out during this row")
        return None, ("error", f"ran past its {cap:g} s limit")
    except Exception as exc:  # noqa: BLE001 - a failing row is reported, never fatal
        traceback.print_exc(file=sys.stderr)
        return None, ("error", error_text(exc))
    finally:
        release_memory()


def guarded(table, budget, row, kind, fn):
    """``fn(row)`` (which fills in the row) under ``attempt``; a failure becomes the row's status."""
    _, failure = attempt(budget, kind, lambda: fn(row))
    if failure:
        row["status"], row["note"] = failure
    table.finished(row)


def release_memory():
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# ----------------------------------------------------------------------------------------------
# device settings


def set_tf32(enabled):
    """TF32 for cuBLAS matmuls and cuDNN convolutions, or IEEE fp32 for both.

    Through ``set_float32_matmul_precision`` and ``cudnn.allow_tf32``, which every torch has: with
    torch >= 2.9's ``fp32_precision`` flags instead, the two APIs' getters disagree (matmul
    ``tf32`` makes ``get_float32_matmul_precision`` raise), and torch's own code reads both.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch >= 2.9 calls the legacy flags deprecated
        torch.set_float32_matmul_precision("high" if enabled else "highest")
        torch.backends.cudnn.allow_tf32 = enabled


def tf32_state():
    return (f"float32_matmul_precision={torch.get_float32_matmul_precision()} (TF32 matmuls: "
            f"{torch.backends.cuda.matmul.allow_tf32}), cuDNN allow_tf32={torch.backends.cudnn.allow_tf32}")


@contextlib.contextmanager
def tf32_mode(device, enabled):
    """TF32 on or off for the block (CUDA), then off again: every fp32 row runs in IEEE fp32."""
    if device.type == "cuda":
        set_tf32(enabled)
    try:
        yield
    finally:
        if device.type == "cuda":
            set_tf32(False)


def unsupported(device, precision, quick):
    """Why ``precision`` cannot run on ``device`` (None when it can)."""
    tf32, amp, compile_model = PRECISIONS[precision]
    if tf32 and device.type != "cuda":
        return "TF32 is a CUDA tensor-core mode (no CPU equivalent)"
    if tf32 and torch.cuda.get_device_capability(device)[0] < 8:
        return "TF32 needs compute capability >= 8.0"
    if amp and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        return "this GPU has no bf16"
    if compile_model and quick and device.type == "cpu":
        return "--quick on the CPU: inductor's C++ build takes minutes"
    return None


def cpu_model():
    """The CPU's model name from /proc/cpuinfo (Linux), else the platform's machine type."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def header_lines(device, args, sizes):
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        cap = ".".join(map(str, torch.cuda.get_device_capability(device)))
        name += f" (compute capability {cap}, {torch.cuda.get_device_properties(device).total_memory / 2**30:.0f} GiB)"
    else:
        name = f"{cpu_model()}, {torch.get_num_threads()} torch threads"
    widths = sizes.widths or "full size (base_channels 96, 13 GCN / 6 G3D scales)"
    return {
        "torch": torch.__version__,
        "device": f"{device.type}: {name}",
        "CUDA": torch.version.cuda or "none (CPU build)",
        "cuDNN": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else "none",
        "TF32 at start": f"{tf32_state()}; fp32 rows force IEEE fp32, tf32 rows TF32",
        "peak memory": ("torch.cuda.max_memory_allocated over each cell's timed steps" if device.type == "cuda"
                        else "not measured: GPU memory, CUDA only"),
        "sizes": (f"{'--quick' if args.quick else 'full'}: T={sizes.frames}, 2 persons, {LAYOUT}, {NUM_CLASSES} "
                  f"classes, batches {list(sizes.batches)}, model {widths}"),
        "budget": f"{args.budget_s:g} s, CPUs {os.cpu_count()}, python {platform.python_version()}",
    }


# ----------------------------------------------------------------------------------------------
# models


def load_fixture(name):
    """PYSKL's outputs for a small MSG3D (tests/fixtures/README.md): meta, state_dict, input, logits."""
    return torch.load(FIXTURES / FIXTURE_FILES[name], weights_only=True)


def fixture_model(ref, device):
    meta = ref["meta"]
    model = build_model(meta["num_classes"], layout=meta["layout"], base_channels=meta["base_channels"])
    model.load_state_dict(ref["state_dict"])
    return model.to(device).eval()


def build_impl(impl, widths, device, num_classes=NUM_CLASSES, layout=LAYOUT):
    """msg3d's model, or the PYSKL-layout baseline holding the same (seed 0) weights."""
    torch.manual_seed(0)
    ours = build_model(num_classes, layout=layout, **widths)
    if impl == "msg3d":
        return ours.to(device)
    baseline = PysklRecognizer(num_classes, layout, **widths)
    baseline.load_state_dict(ours.state_dict())
    return baseline.to(device)


# ----------------------------------------------------------------------------------------------
# correctness


def check_fixture_logits(row, ref, device, precision):
    """Eval logits of the fixture's weights and input against PYSKL's fp32 logits."""
    tf32, amp, _ = PRECISIONS[precision]
    model = fixture_model(ref, device)
    with tf32_mode(device, tf32), torch.no_grad(), autocast(device, amp):
        logits = model(ref["input"].to(device)).float().cpu()
    diff = (logits - ref["logits"]).abs().max().item()
    tol = FP32_ATOL if precision == "fp32" else RELATIVE_TOLERANCE[precision] * ref["logits"].abs().max().item()
    row["value"] = diff
    judge(row, diff <= tol, f"top-1 agrees on {int((logits.argmax(1) == ref['logits'].argmax(1)).sum())}/"
                            f"{len(logits)}")
    if precision != "fp32":
        row["criterion"] = f"<= {tol:.3g} ({RELATIVE_TOLERANCE[precision]:.0%} max|logit|)"


def check_backward(row, ref, device, amp):
    """A training step on the fixture's weights: every parameter gets a finite gradient, PA included."""
    model = fixture_model(ref, device).train()
    labels = torch.tensor([3, 7], device=device)
    with autocast(device, amp):
        logits = model(ref["input"].to(device))
    F.cross_entropy(logits.float(), labels).backward()
    bad = [name for name, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    pa_zero = [name for name, p in model.named_parameters()
               if name.endswith(".PA") and p.grad is not None and p.grad.abs().sum() == 0]
    row["value"] = float(len(bad) + len(pa_zero))
    judge(row, not bad and not pa_zero,
          f"missing/non-finite: {bad[:3]}, zero PA gradient: {pa_zero[:3]}" if bad or pa_zero else
          f"{sum(1 for _ in model.parameters())} parameters")


def check_msgcn_orders(row, ref, device):
    """Each projection-first MSGCN of the fixture model, one sequence at a time (the CPU's order) and
    the whole batch at once (the GPU's), on ``device``: (N=4, C, T=20, V) random input."""
    model = fixture_model(ref, device)
    gen = torch.Generator().manual_seed(0)
    worst, count = 0.0, 0
    with tf32_mode(device, False), torch.no_grad():
        for module in model.modules():
            if not isinstance(module, MSGCN) or not module.project_first:
                continue
            c_in = module.mlp.layers[0].in_channels // module.num_scales
            v = module.A.shape[-1] // module.window_size
            x = torch.randn(4, c_in, 20, v, generator=gen).to(device).contiguous(memory_format=torch.channels_last)
            # the effective scales, as MSGCN.forward builds them
            a = (module.A + module.PA).view(module.num_scales, module.window_size, v, module.window_size, v)
            one = module._project_then_aggregate(x, a, sequences_per_step=1)
            batched = module._project_then_aggregate(x, a, sequences_per_step=x.shape[0])
            worst = max(worst, (one - batched).abs().max().item())
            count += 1
    row["value"] = worst
    judge(row, count > 0 and worst <= FP32_ATOL, f"{count} MSGCN modules")


def check_device_vs_cpu(row, ref, device):
    with tf32_mode(device, False), torch.no_grad():
        on_device = fixture_model(ref, device)(ref["input"].to(device)).cpu()
        on_cpu = fixture_model(ref, torch.device("cpu"))(ref["input"])
    row["value"] = (on_device - on_cpu).abs().max().item()
    judge(row, row["value"] <= FP32_ATOL)


def check_baseline_matches(row, device):
    """The baseline and msg3d, same seed-0 weights, fixture width, after one training-mode forward
    (so that BN running statistics are not the identity): eval logits agree."""
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(2, 2, 32, NUM_JOINTS, 3, generator=gen).to(device)
    widths = {"base_channels": 24}
    logits = []
    with tf32_mode(device, False):
        for impl in IMPLS:
            model = build_impl(impl, widths, device)
            with torch.no_grad():
                model.train()(x)
                logits.append(model.eval()(x).cpu())
    row["value"] = (logits[0] - logits[1]).abs().max().item()
    judge(row, row["value"] <= FP32_ATOL)


def learnable_store(out_dir, num_samples, seed=0):
    """A store of one-person NTU-shaped samples (20-40 frames) whose class c lifts the joints
    ``TRAIN_JOINTS[c]`` by 0.5 along axis c % 3 over a shared noisy skeleton; split ``train``."""
    rng = np.random.default_rng(seed)
    rest = rng.normal(0, 0.3, (NUM_JOINTS, 3))
    names = []
    with StoreWriter(out_dir, num_joints=NUM_JOINTS, channels=3) as writer:
        for i in range(num_samples):
            label = i % len(TRAIN_JOINTS)
            keypoint = rest + rng.normal(0, 0.05, (1, int(rng.integers(20, 41)), NUM_JOINTS, 3))
            keypoint[:, :, list(TRAIN_JOINTS[label]), label % 3] += 0.5
            names.append(f"L{i:05d}")
            writer.append(names[-1], label, keypoint)
        writer.finish(splits={"train": names},
                      meta={"layout": LAYOUT, "modality": "j", "num_classes": len(TRAIN_JOINTS)})
    return out_dir


def check_training(row, device, amp, workdir):
    """``TRAIN_STEPS`` steps of PYSKL's optimiser and cosine schedule (lr ``TRAIN_LR``, batch
    ``TRAIN_BATCH``, clip ``TRAIN_CLIP_LEN``) on a 32-sample learnable store, through
    ``SkeletonDataset`` and ``train_loader`` (0 workers): the loss must fall well below chance."""
    store = workdir / "learnable"
    if not store.exists():
        learnable_store(store, 32)
    dataset = SkeletonDataset(store, "train", clip_len=TRAIN_CLIP_LEN, seed=0,
                              repeat=math.ceil(TRAIN_STEPS * TRAIN_BATCH / 32))
    loader = train_loader(dataset, TRAIN_BATCH, 0, DistInfo(), seed=0, pin_memory=device.type == "cuda")
    torch.manual_seed(0)
    model = build_model(len(TRAIN_JOINTS), layout=LAYOUT, **TRAIN_WIDTHS).to(device).train()
    hp = HParams()
    optimizer = build_optimizer(model, TRAIN_LR, hp.momentum, hp.nesterov, hp.weight_decay)
    schedule = build_schedule(hp, optimizer, TRAIN_LR, TRAIN_STEPS, TRAIN_STEPS)
    losses = []
    for keypoint, label in loader:
        schedule.apply(len(losses))
        with autocast(device, amp):
            logits = model(keypoint[:, 0].to(device, non_blocking=True))
        loss = F.cross_entropy(logits.float(), label.to(device, non_blocking=True))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
        if len(losses) == TRAIN_STEPS:
            break
    first, last = np.mean(losses[:10]), np.mean(losses[-10:])
    row["value"] = last
    judge(row, len(losses) == TRAIN_STEPS and bool(np.isfinite(losses).all()) and last < TRAIN_LOSS_LIMIT,
          f"mean loss of the first 10 steps {first:.3f}, of the last 10 {last:.3f}")


def correctness_rows(table, device, quick, workdir):
    """The correctness rows, added to ``table`` (those that cannot run here already skipped, with
    their reason), with the function that fills in each: a list of (row, fn)."""
    refs = {}

    def fixture(name):  # loaded once, by the first row that needs it (so a missing file is that row's error)
        if name not in refs:
            refs[name] = load_fixture(name)
        return refs[name]

    plan = []

    def add(name, unit, criterion, reason, fn):
        row = table.add("correctness", name, unit, criterion)
        if reason:
            skip(row, reason)
        plan.append((row, fn))

    exact = f"<= {FP32_ATOL:g}"
    for name in FIXTURE_FILES:
        for precision in ("fp32", "tf32", "bf16"):
            add(f"{'bf16 autocast' if precision == 'bf16' else precision} logits vs PYSKL fixture ({name})", "abs",
                exact if precision == "fp32" else f"<= {RELATIVE_TOLERANCE[precision]:.0%} max|logit|",
                unsupported(device, precision, quick),
                lambda r, n=name, p=precision: check_fixture_logits(r, fixture(n), device, p))
    for precision, amp in (("fp32", None), ("bf16", "bf16")):
        add(f"{precision} backward: every gradient finite", "count", "== 0 bad parameters",
            unsupported(device, precision, quick), lambda r, a=amp: check_backward(r, fixture("ntu"), device, a))
    add("MSGCN per-sequence (CPU) vs batched (GPU) order", "abs", exact, None,
        lambda r: check_msgcn_orders(r, fixture("ntu"), device))
    add(f"logits on {device.type} vs on CPU (ntu fixture)", "abs", exact,
        "the device is the CPU: the MSGCN row compares the two orders" if device.type == "cpu" else None,
        lambda r: check_device_vs_cpu(r, fixture("ntu"), device))
    add("baseline vs msg3d logits, same weights", "abs", exact, None, lambda r: check_baseline_matches(r, device))
    for precision, amp in (("fp32", None), ("bf16", "bf16")):
        reason = unsupported(device, precision, quick)
        if amp and quick and device.type == "cpu":
            reason = "--quick on the CPU: a second 50-step run; the bf16 backward row checks bf16 there"
        add(f"{TRAIN_STEPS} training steps lower the loss ({precision})", "loss",
            f"< {TRAIN_LOSS_LIMIT:.3f} (ln 4 / 2)", reason, lambda r, a=amp: check_training(r, device, a, workdir))
    return plan


def run_rows(table, budget, plan, kind):
    """Fill in each planned row not skipped already, under ``guarded``."""
    for row, fn in plan:
        if row["status"] == "skipped":
            table.finished(row)
        else:
            guarded(table, budget, row, kind, fn)


# ----------------------------------------------------------------------------------------------
# throughput


def measure_cell(model, mode, batch, amp, sizes, device):
    """Samples/s of one (model, mode, batch): ``sizes.warmup`` untimed steps, then the median of
    enough timed steps for ``sizes.min_time`` seconds (``sizes.min_iters`` to ``sizes.max_iters``).
    Returns (samples/s, peak MiB on CUDA else None, warm-up seconds, last loss finite)."""
    gen = torch.Generator().manual_seed(batch)
    x = torch.randn(batch, 2, sizes.frames, NUM_JOINTS, 3, generator=gen).to(device)
    labels = torch.randint(0, NUM_CLASSES, (batch,), generator=gen).to(device)
    losses = []
    if mode == "train":
        model.train()
        hp = dataclasses.replace(HParams(), batch_size=batch)
        optimizer = build_optimizer(model, hp.scaled_lr(1), hp.momentum, hp.nesterov, hp.weight_decay)

        def step():
            with autocast(device, amp):
                logits = model(x)
            loss = F.cross_entropy(logits.float(), labels)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(loss.detach())
    else:
        model.eval()

        def step():
            with torch.no_grad(), autocast(device, amp):
                losses.append(model(x).float().abs().mean())

    sync_device(device)
    start = time.perf_counter()
    for _ in range(sizes.warmup):
        last = time.perf_counter()
        step()
        sync_device(device)
    warmup_s = time.perf_counter() - start
    per_step = time.perf_counter() - last
    iters = min(sizes.max_iters, max(sizes.min_iters, math.ceil(sizes.min_time / max(per_step, 1e-6))))
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    seconds = median_seconds(step, iters, device)
    peak = peak_memory_mb(device) if device.type == "cuda" else None
    return batch / seconds, peak, warmup_s, bool(torch.isfinite(losses[-1]).item())


def run_group(budget, device, sizes, mode, precision, impl):
    """One model (fresh; compiled for the compile precision) at every batch size, in order:
    ``{batch: (measure_cell's tuple or None, failure or None)}``. A compiled model that failed
    or ran out of time is not compiled again for the later batches."""
    tf32, amp, compile_model = PRECISIONS[precision]
    kind = "compile" if compile_model else "eager"
    state, results = {}, {}

    def measure(batch):
        if "model" not in state:
            model = build_impl(impl, sizes.widths, device)
            # torch.compile's default, as msg3d train --compile: static shapes, then a dynamic
            # batch dimension from the second batch size on
            state["model"] = torch.compile(model) if compile_model else model
        with tf32_mode(device, tf32):
            return measure_cell(state["model"], mode, batch, amp, sizes, device)

    for i, batch in enumerate(sizes.batches):
        results[batch] = attempt(budget, kind, lambda b=batch: measure(b))
        failure = results[batch][1]
        if failure and compile_model:
            for later in sizes.batches[i + 1:]:
                results[later] = (None, (failure[0], f"{failure[1]} (at b{batch}, not compiled again)"))
            break
    state.clear()
    if compile_model:
        torch._dynamo.reset()  # its caches hold the compiled graphs, and through them GPU memory
    release_memory()
    return results


def settle_row(row, ours, base, compile_model, mode):
    """A throughput row from msg3d's and the baseline's ``(result, failure)``: msg3d decides the
    status; a baseline failure (e.g. out of memory at a batch PYSKL's layout cannot hold) is a note."""
    notes = []
    for impl, (result, failure) in (("msg3d", ours), ("baseline", base)):
        ours_side = impl == "msg3d"
        prefix = "" if ours_side else "baseline: "
        if failure:
            if ours_side:
                row["status"] = failure[0]
                notes.append(failure[1])
            elif failure != ours[1]:
                notes.append(f"baseline {failure[0]}: {failure[1]}")
            continue
        rate, peak, warmup_s, finite = result
        row["value" if ours_side else "reference"] = rate
        row["memory_mib" if ours_side else "reference_memory_mib"] = peak
        if compile_model:
            notes.append(f"{prefix}warm-up (compile) {warmup_s:.0f} s")
        if not finite:
            notes.append(f"{prefix}non-finite {'loss' if mode == 'train' else 'output'}")
        if ours_side:
            row["status"] = "ok" if finite else "fail"
    if row["value"] is not None and row["reference"]:
        row["ratio"] = row["value"] / row["reference"]
    row["note"] = "; ".join(notes)


def throughput_rows(table, sizes):
    return {(mode, precision, batch): table.add(mode, f"{precision} b{batch}", "samples/s", mode=mode,
                                                precision=precision, batch=batch)
            for mode in MODES for precision in PRECISIONS for batch in sizes.batches}


def throughput_phase(table, budget, device, sizes, rows, quick, compiled):
    """The eager precisions (``compiled`` False: by mode, precision, then msg3d and the baseline) or
    the compile precision (msg3d's train and eval before the baseline's, which no goal needs).
    A row is settled as soon as both of its models have run."""
    groups = [(mode, precision) for mode in MODES for precision, (_, _, c) in PRECISIONS.items() if c == compiled]
    order = ([(impl, group) for impl in IMPLS for group in groups] if compiled
             else [(impl, group) for group in groups for impl in IMPLS])
    results = {}
    for impl, (mode, precision) in order:
        reason = unsupported(device, precision, quick)
        if reason:
            results[impl, mode, precision] = {batch: (None, ("skipped", reason)) for batch in sizes.batches}
        else:
            results[impl, mode, precision] = run_group(budget, device, sizes, mode, precision, impl)
        if all((other, mode, precision) in results for other in IMPLS):
            for batch in sizes.batches:
                row = rows[(mode, precision, batch)]
                settle_row(row, results["msg3d", mode, precision][batch], results["baseline", mode, precision][batch],
                           PRECISIONS[precision][2], mode)
                table.finished(row)


# ----------------------------------------------------------------------------------------------
# data loading


def measure_loader(store, sizes, batch, workers, device):
    """Samples/s of the train loader over ``store`` (seeded train-mode sampling, clip length T):
    warm-up batches (worker start), then ``sizes.data_time`` seconds of batches, each copied to
    ``device`` as the training loop does."""
    repeat = math.ceil(DATA_ITEMS / sizes.store_samples)  # an epoch the timed window does not exhaust
    dataset = SkeletonDataset(store, "train", clip_len=sizes.frames, seed=0, repeat=repeat)
    loader = train_loader(dataset, batch, workers, DistInfo(), seed=0, pin_memory=device.type == "cuda")
    batches = iter(loader)
    for _ in range(max(2, 2 * workers)):
        next(batches)
    samples, start = 0, time.perf_counter()
    for keypoint, label in batches:
        keypoint[:, 0].to(device, non_blocking=True)
        label.to(device, non_blocking=True)
        samples += len(label)
        if time.perf_counter() - start >= sizes.data_time:
            break
    sync_device(device)
    elapsed = time.perf_counter() - start
    del batches  # stops the workers
    return samples / elapsed


def fastest_training(table):
    """The fastest measured msg3d training row (any precision and batch), or None."""
    rows = [r for r in table.find("train") if r["value"] is not None and r["status"] == "ok"]
    return max(rows, key=lambda r: r["value"], default=None)


def data_rows(table, device, sizes, workdir, workers):
    """One loader row per worker count, with the function that measures it: a list of (row, fn).
    The batch is the fastest training row's when it runs (else the largest batch size); the
    reference (the consumption) is ``compare_data``'s, once every training row has run."""
    store = workdir / "loading"

    def measure(row):
        best = fastest_training(table)
        row["batch"] = best["batch"] if best else sizes.batches[-1]
        if not store.exists():
            build_store(store, sizes.store_samples)
        row["value"] = measure_loader(store, sizes, row["batch"], row["workers"], device)
        row["status"] = "ok"
        row["note"] = f"batch {row['batch']}"

    return [(table.add("data", f"train loader, {w} workers", "samples/s", workers=w), measure) for w in workers]


def compare_data(table):
    """Reference and ratio of the loader rows: the fastest msg3d training row's samples/s."""
    best = fastest_training(table)
    for row in table.find("data"):
        if row["value"] is None:
            continue
        if best is None:
            row["note"] = "no training row measured"
        else:
            row["reference"], row["ratio"] = best["value"], row["value"] / best["value"]
            row["note"] = f"batch {row['batch']}; consumption: msg3d train {best['precision']} b{best['batch']}"


# ----------------------------------------------------------------------------------------------
# goals


def goal_rows(table, sizes, quick):
    """The goal rows, from whatever rows were measured: per mode and batch, msg3d's fastest
    precision against the baseline's faster of fp32 and TF32 (>= 3x); the fastest loader row
    against the fastest msg3d training row (>= 2x). Measured but skipped at ``--quick`` sizes."""
    not_judged = "--quick sizes: goals are judged at full size (T=100, full-width model)" if quick else None
    for mode in MODES:
        for batch in sizes.batches:
            row = table.add("goals", f"{mode} >= {GOAL_SPEEDUP:g}x baseline (b{batch})", "samples/s",
                            f">= {GOAL_SPEEDUP:g}x baseline fp32/tf32")
            ours = [r for r in table.find(mode, batch=batch) if r["status"] == "ok" and r["value"] is not None]
            base = [r for r in table.find(mode, batch=batch) if r["precision"] in ("fp32", "tf32")
                    and r["reference"] is not None]
            best = max(ours, key=lambda r: r["value"], default=None)
            ref = max(base, key=lambda r: r["reference"], default=None)
            if best is None or ref is None:
                skip(row, f"no measured {'msg3d' if best is None else 'baseline fp32/tf32'} {mode} row at this batch")
            else:
                row["value"], row["reference"] = best["value"], ref["reference"]
                row["ratio"] = best["value"] / ref["reference"]
                base_best = max((r["reference"] for r in table.find(mode, batch=batch) if r["reference"]))
                note = (f"msg3d {best['precision']} vs baseline {ref['precision']} "
                        f"({best['value'] / base_best:.2f}x the baseline's fastest precision)")
                if not_judged:
                    skip(row, f"{not_judged}; {note}")
                else:
                    judge(row, row["ratio"] >= GOAL_SPEEDUP, note)
            table.finished(row)
    row = table.add("goals", f"data loading >= {GOAL_DATA:g}x training consumption", "samples/s",
                    f">= {GOAL_DATA:g}x fastest msg3d train")
    loaders = [r for r in table.find("data") if r["status"] == "ok"]
    best = max(loaders, key=lambda r: r["value"], default=None)
    fastest = fastest_training(table)
    if best is None or fastest is None:
        skip(row, "no measured " + ("loader" if best is None else "training") + " row")
    else:
        row["value"], row["reference"] = best["value"], fastest["value"]
        row["ratio"] = best["value"] / fastest["value"]
        note = f"{best['workers']} workers"
        if not_judged:
            skip(row, f"{not_judged}; {note}")
        else:
            judge(row, row["ratio"] >= GOAL_DATA, note)
    table.finished(row)


# ----------------------------------------------------------------------------------------------


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], default=None, help="default: cuda when available")
    parser.add_argument("--quick", action="store_true",
                        help=f"tiny sizes (T={QUICK.frames}, batches {list(QUICK.batches)}, narrow model, "
                             "compile skipped on the CPU): the test suite's run")
    parser.add_argument("--json", type=Path, default=None, help="also write the table as JSON to this file")
    parser.add_argument("--budget-s", type=float, default=420.0,
                        help="seconds for the whole run; rows not reached are skipped (default 420)")
    parser.add_argument("--sections", nargs="+", choices=SECTIONS, default=list(SECTIONS),
                        help="sections to run (goals are always derived from what ran)")
    parser.add_argument("--batches", type=int, nargs="+", default=None, help="batch sizes per GPU")
    parser.add_argument("--frames", type=int, default=None, help="clip length T")
    parser.add_argument("--workers", type=int, nargs="+", default=None,
                        help="data-loader workers per row (default: the recipe's and all CPUs but one)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default: torch's; 1 with --quick, whose tiny steps a second "
                             "thread does not speed up and a busy machine slows down 10x)")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        print("device_check: --device cuda but no CUDA device is available", file=sys.stderr)
        return 2
    threads_before = torch.get_num_threads()
    if args.threads or args.quick:
        torch.set_num_threads(args.threads or 1)
    sizes = QUICK if args.quick else FULL
    sizes = dataclasses.replace(sizes, **{k: v for k, v in (("frames", args.frames), ("batches", args.batches))
                                          if v is not None})
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    workers = args.workers or sorted({HParams().num_workers, max(1, cpus - 1)})
    budget = Budget(args.budget_s)
    table = Table(header_lines(device, args, sizes), args.json)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # as msg3d train sets it
        set_tf32(False)

    def terminate(signum, frame):
        raise Terminated()

    previous_term = signal.signal(signal.SIGTERM, terminate) if on_main_thread() else None
    terminated = False
    try:
        with tempfile.TemporaryDirectory(prefix="device_check_") as tmp:
            workdir = Path(tmp)
            # every row is on the table before anything runs, so a stopped run still lists them all
            checks = correctness_rows(table, device, args.quick, workdir) if "correctness" in args.sections else []
            rows = throughput_rows(table, sizes) if "throughput" in args.sections else {}
            loaders = data_rows(table, device, sizes, workdir, workers) if "data" in args.sections else []
            run_rows(table, budget, checks, "check")
            if rows:
                throughput_phase(table, budget, device, sizes, rows, args.quick, compiled=False)
            run_rows(table, budget, loaders, "data")
            if rows:
                throughput_phase(table, budget, device, sizes, rows, args.quick, compiled=True)
    except Terminated:
        print("device_check: SIGTERM, writing the table", file=sys.stderr)
        terminated = True
    finally:
        if previous_term is not None:
            signal.signal(signal.SIGTERM, previous_term)
        torch.set_num_threads(threads_before)
        for row in table.rows:
            if row["status"] == "pending":
                skip(row, "the run stopped before this row finished")
        compare_data(table)
        goal_rows(table, sizes, args.quick)
        table.save()
        print(format_table(table), flush=True)
    if terminated:
        return 128 + signal.SIGTERM  # the shell's code for a process ended by SIGTERM
    return 1 if table.failures() else 0


if __name__ == "__main__":
    sys.exit(main())
