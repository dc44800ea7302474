"""A periodic progress line on stderr (no tqdm): position, loss, lr, throughput and ETA."""

import sys
import time


def format_duration(seconds):
    seconds = int(round(max(seconds, 0)))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


class Progress:
    """Prints at most every ``min_seconds`` (and always when ``force``); ETA from this process's pace."""

    def __init__(self, total_iters, done_iters=0, min_seconds=10.0, stream=None, enabled=True):
        self.total = total_iters
        self.start_done = done_iters
        self.start_time = time.perf_counter()
        self.last_print = -float("inf")
        self.min_seconds = min_seconds
        self.stream = sys.stderr if stream is None else stream
        self.enabled = enabled

    def eta(self, done):
        run = done - self.start_done
        if run <= 0:
            return float("nan")
        return (time.perf_counter() - self.start_time) / run * (self.total - done)

    def update(self, done, text, force=False):
        if not self.enabled:
            return
        now = time.perf_counter()
        if not force and now - self.last_print < self.min_seconds:
            return
        self.last_print = now
        eta = self.eta(done)
        eta_text = "?" if eta != eta else format_duration(eta)
        print(f"[{done}/{self.total}] {text} ETA {eta_text}", file=self.stream, flush=True)
