"""Progress lines on stderr (no tqdm) and the measurements they show: position, ETA, time per
iteration, data time, throughput and peak memory (mmcv's ``IterTimerHook`` / ``TextLoggerHook``
fields, which PYSKL's logs show).
"""

import datetime
import resource
import sys
import time

import torch


def format_duration(seconds):
    seconds = int(round(max(seconds, 0)))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def timestamp():
    """Local date and time to the second (log.jsonl's ``time`` is the same, ISO-spelt with a ``T``)."""
    return datetime.datetime.now().isoformat(sep=" ", timespec="seconds")


class Progress:
    """Prints ``TIMESTAMP [done/total] TEXT ETA H:MM:SS`` at most every ``min_seconds`` (and always when
    ``force``); the ETA extrapolates this process's pace since it started (validation included)."""

    def __init__(self, total_iters, done_iters=0, min_seconds=10.0, stream=None, enabled=True):
        self.total = total_iters
        self.start_done = done_iters
        self.start_time = time.perf_counter()
        self.last_print = -float("inf")
        self.min_seconds = min_seconds
        self.stream = sys.stderr if stream is None else stream
        self.enabled = enabled

    def eta(self, done):
        """Seconds left (NaN before the first iteration of this process)."""
        run = done - self.start_done
        if run <= 0:
            return float("nan")
        return (time.perf_counter() - self.start_time) / run * (self.total - done)

    def due(self):
        """Whether a line printed now would not be throttled."""
        return self.enabled and time.perf_counter() - self.last_print >= self.min_seconds

    def update(self, done, text, force=False):
        if not (force and self.enabled) and not self.due():
            return
        self.last_print = time.perf_counter()
        eta = self.eta(done)
        eta_text = "?" if eta != eta else format_duration(eta)
        print(f"{timestamp()} [{done}/{self.total}] {text} ETA {eta_text}", file=self.stream, flush=True)


class IterationTimer:
    """Time per iteration and data time (seconds spent waiting for the loader) of the iterations since
    the last ``window(reset=True)``, as mmcv's IterTimerHook measures them: an iteration runs from
    the end of the previous one (or ``restart``) to its own end, so a checkpoint written after an
    iteration (``hook_done``) counts in the next one's time, but not in its data time."""

    def __init__(self):
        self.restart()
        self._reset()

    def restart(self):
        """Begin timing here (a new epoch: validation time is no iteration's)."""
        self.last = self.data_start = self.data_ready = time.perf_counter()

    def _reset(self):
        self.seconds = self.data_seconds = 0.0
        self.iters = self.samples = 0

    def batch_ready(self):
        self.data_ready = time.perf_counter()

    def hook_done(self):
        self.data_start = time.perf_counter()

    def iteration_done(self, samples):
        now = time.perf_counter()
        self.seconds += now - self.last
        self.data_seconds += self.data_ready - self.data_start
        self.iters += 1
        self.samples += samples
        self.last = self.data_start = now

    def window(self, reset):
        """``{iter_time, data_time, samples_per_s}`` (means over the window; None when it is empty)."""
        if not self.iters:
            return {"iter_time": None, "data_time": None, "samples_per_s": None}
        out = {"iter_time": self.seconds / self.iters, "data_time": self.data_seconds / self.iters,
               "samples_per_s": self.samples / self.seconds if self.seconds > 0 else None}
        if reset:
            self._reset()
        return out


def peak_memory_mb(device):
    """Peak memory of this process in MiB: ``torch.cuda.max_memory_allocated`` on a GPU (what mmcv
    logs), the resident set's high-water mark (``ru_maxrss``, KiB on Linux) on the CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def format_train_line(record, epochs, iters_per_epoch, memory_kind):
    """The console text of a ``train`` record (``msg3d.engine.loop.train_record``), for ``Progress``."""
    parts = [f"epoch {record['epoch']}/{epochs} iter {record['epoch_iter']}/{iters_per_epoch}",
             f"lr {record['lr']:.4g}",
             f"loss {record['loss']:.4f} top1 {record['top1']:.3f} over {record['iters']} "
             f"iter{'s' if record['iters'] != 1 else ''}"]
    if record["iter_time"] is not None:
        parts.append(f"time {record['iter_time']:.3f} s data {record['data_time']:.3f} s")
    if record["samples_per_s"] is not None:
        parts.append(f"{record['samples_per_s']:.1f} samples/s")
    parts.append(f"mem {record['memory_mb']:.0f} MiB ({memory_kind})")
    return " | ".join(parts)
