"""The training loop's parts: its resumable state, one epoch of training, and validation.

Shapes: loaders yield ``(keypoint, label)`` with keypoint ``(N, num_clips, M, T, V, C)`` (one clip
when training) and label ``(N,)``. Statistics are summed over all ranks, in float64, so every rank
sees the same numbers and a resumed run continues the same sums.
"""

import copy
import dataclasses
import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from msg3d.engine import distributed as distmod
from msg3d.engine.device import autocast
from msg3d.engine.evaluate import predict_all_ranks
from msg3d.engine.progress import format_train_line, peak_memory_mb
from msg3d.metrics import mean_class_accuracy, top_k_accuracy


class NonFiniteLossError(ValueError):
    """The training loss became NaN or infinite (a ValueError, so the CLI reports it as an error)."""


@dataclass
class TrainState:
    """Where a training run stands; everything a resume needs besides weights, optimizer and RNG."""

    epoch: int = 0  # the current epoch, 0-based
    iter_in_epoch: int = 0  # batches of it already done
    global_iter: int = 0  # batches done in all
    epoch_sums: list = field(default_factory=lambda: [0.0, 0.0, 0.0])  # loss x n, correct, n (all ranks)
    epoch_seconds: float = 0.0  # wall time the current epoch had taken when it was checkpointed
    epoch_train_seconds: float = 0.0  # the same for its training part
    interval: list = field(default_factory=lambda: [0.0, 0.0, 0.0, 0])  # sums since the last log line + iters
    history: list = field(default_factory=list)  # one row per finished epoch (saver.EPOCH_COLUMNS)
    best: dict = field(default_factory=lambda: {"top1": None, "epoch": None})  # best val top-1 so far

    def state_dict(self):
        return copy.deepcopy(dataclasses.asdict(self))

    def load_state_dict(self, state, source="the checkpoint"):
        missing = [f.name for f in dataclasses.fields(self) if f.name not in state]
        if missing:
            raise ValueError(f"{source}: its train_state lacks {missing} (written by another msg3d version?)")
        for f in dataclasses.fields(self):
            setattr(self, f.name, copy.deepcopy(state[f.name]))

    def add_batch(self, loss_sum, correct, count):
        self.global_iter += 1
        self.iter_in_epoch += 1
        for i, value in enumerate((loss_sum, correct, count)):
            self.epoch_sums[i] += value
            self.interval[i] += value
        self.interval[3] += 1

    def peek_interval(self):
        """``(mean loss, top-1, iterations)`` since the last ``take_interval`` (means over its samples)."""
        loss_sum, correct, count, iterations = self.interval
        return loss_sum / count, correct / count, iterations

    def take_interval(self):
        """``peek_interval()``, and start a new interval."""
        window = self.peek_interval()
        self.interval = [0.0, 0.0, 0.0, 0]
        return window

    def finish_epoch(self, row):
        """Record the finished epoch's ``row``, move to the next epoch; True if it is the new best."""
        self.history.append(row)
        self.epoch += 1
        self.iter_in_epoch = 0
        self.epoch_sums = [0.0, 0.0, 0.0]
        self.epoch_seconds = self.epoch_train_seconds = 0.0
        if self.best["top1"] is None or row["val_top1"] > self.best["top1"]:
            self.best = {"top1": row["val_top1"], "epoch": row["epoch"]}
            return True
        return False


class EpochClock:
    """Wall time of the current epoch and of its training part, continued across a resume."""

    def __init__(self, state):
        now = time.perf_counter()
        self.start = now - state.epoch_seconds
        self.train_start = now - state.epoch_train_seconds
        self.train_seconds = None

    def stop_training(self):
        self.train_seconds = time.perf_counter() - self.train_start

    def record(self, state):
        """Store the times so far in ``state`` (before a mid-epoch checkpoint)."""
        now = time.perf_counter()
        state.epoch_seconds = now - self.start
        state.epoch_train_seconds = now - self.train_start

    def seconds(self):
        return time.perf_counter() - self.start


# Iterations between reads of the device's loss/top-1 sums: the read waits for the GPU (a host
# sync), so it happens at log lines, checkpoints, the epoch's end, console lines, and at least this
# often; the same iterations on every rank, as it is a collective.
SUMS_READ_EVERY = 20


def train_one_epoch(model, loader, optimizer, schedule, state, clock, saver, progress, timer, *, hp, iters_per_epoch,
                    device, amp, dist_info, stop_at=None):
    """Train the rest of epoch ``state.epoch`` (all of it, or what a resume left), or up to global
    iteration ``stop_at`` (``msg3d train --max-iters``) when that comes first.

    Per batch: the lr of the iteration, forward (bf16 autocast with ``amp``), cross-entropy in
    float32, backward, the step, and the batch's loss/top-1 sums kept on the device. The sums are
    read (all-reduced over ranks, ``_read_sums``) every ``SUMS_READ_EVERY`` iterations, at log lines
    and before any checkpoint, so that a step never waits for the host: a non-finite loss then
    stops training with ``NonFiniteLossError`` naming its iteration, before anything is saved (the
    weights stepped since are never written). Every ``hp.log_interval`` iterations a ``train``
    record (``train_record``) in log.jsonl and on the console (``progress``, which also shows the
    window so far when it has been silent for its ``min_seconds``); latest.pth every
    ``hp.checkpoint_interval`` iterations inside the epoch (its end is checkpointed by
    ``saver.end_epoch``). ``timer``: an ``IterationTimer``, kept across epochs.
    """
    loader.sampler.set_position(state.epoch, state.iter_in_epoch * hp.batch_size)
    loader.dataset.set_epoch(state.epoch)
    memory_kind = "GPU peak" if device.type == "cuda" else "peak RSS"
    pending = []  # per batch since the last read: (loss x n, correct, n) on the device, float64
    timer.restart()
    for keypoint, label in loader:
        timer.batch_ready()
        lr = schedule.apply(state.global_iter + len(pending))
        keypoint = keypoint[:, 0].to(device, non_blocking=True)
        label = label.to(device, non_blocking=True)
        with autocast(device, amp):
            logits = model(keypoint)
        loss = F.cross_entropy(logits.float(), label)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        with torch.no_grad():
            n = torch.full((), label.shape[0], dtype=torch.float64, device=device)
            pending.append(torch.stack([loss.double() * n, (logits.argmax(1) == label).sum().double(), n]))
        # equal batches on every rank (the sampler pads): the samples of all ranks
        timer.iteration_done(label.shape[0] * dist_info.world_size)

        done = state.global_iter + len(pending)
        at_log_line = done % hp.log_interval == 0
        at_checkpoint = bool(hp.checkpoint_interval) and done % hp.checkpoint_interval == 0
        at_stop = stop_at is not None and done >= stop_at
        # a console line due (every progress.min_seconds, rank 0) reads them too in a single process;
        # under DDP it shows the window read so far (a read is collective: every rank must join)
        console_due = progress.due() and not dist_info.enabled
        if at_log_line or at_checkpoint or at_stop or console_due or len(pending) >= SUMS_READ_EVERY:
            _read_sums(pending, state, saver, dist_info)
        if (at_log_line or progress.due()) and state.interval[3]:
            record = train_record(state, lr, timer, progress, device, close_window=at_log_line)
            if at_log_line:
                saver.log.write(**record)
            progress.update(done, format_train_line(record, hp.epochs, iters_per_epoch, memory_kind),
                            force=at_log_line)
        if (at_checkpoint or at_stop) and state.iter_in_epoch < iters_per_epoch:
            clock.record(state)
            saver.save_latest(state)
            timer.hook_done()
        if at_stop:
            break
    _read_sums(pending, state, saver, dist_info)
    clock.stop_training()


def _read_sums(pending, state, saver, dist_info):
    """Add the batches of ``pending`` (emptied) to ``state``, in order, with their sums over all
    ranks; NonFiniteLossError at the first batch whose loss is not finite."""
    if not pending:
        return
    sums = distmod.all_reduce_sum(dist_info, torch.stack(pending)).tolist()
    pending.clear()
    for loss_sum, correct, count in sums:
        if not math.isfinite(loss_sum):
            message = (f"non-finite training loss ({loss_sum / count}) at iteration {state.global_iter + 1} (epoch "
                       f"{state.epoch + 1}, batch {state.iter_in_epoch + 1}); stopped without saving; last good "
                       f"checkpoint: {saver.last_good_checkpoint()}")
            saver.log.write(type="error", iter=state.global_iter, message=message)
            raise NonFiniteLossError(message)
        state.add_batch(loss_sum, correct, count)


def train_record(state, lr, timer, progress, device, *, close_window):
    """The ``train`` record of the window of iterations since the last one (mmcv's log fields):
    ``epoch`` (1-based) and ``epoch_iter`` (its batches done), ``iter`` (all batches done), ``lr`` (of
    the last iteration), ``loss`` and ``top1`` (means over the window's samples on all ranks: the
    smoothed loss), ``iters`` (the window's length), and the measurements (saver.MEASURED_KEYS):
    ``iter_time`` and ``data_time`` (s per iteration, means over the iterations this process timed),
    ``samples_per_s`` (all ranks), ``memory_mb`` (``peak_memory_mb``) and ``eta_s`` (None until known).
    ``close_window``: start a new window (at a log line) or only show the current one (progress).
    """
    loss, top1, iters = state.take_interval() if close_window else state.peek_interval()
    eta = progress.eta(state.global_iter)
    return {"type": "train", "epoch": state.epoch + 1, "epoch_iter": state.iter_in_epoch,
            "iter": state.global_iter, "lr": lr, "loss": loss, "top1": top1, "iters": iters,
            **timer.window(reset=close_window), "memory_mb": peak_memory_mb(device),
            "eta_s": None if math.isnan(eta) else eta}


def validate(core, loader, labels, *, device, amp, dist_info):
    """Validate the model every rank holds after adopting rank 0's BN statistics (PYSKL keeps them
    per process; see ``distributed.sync_buffers``). Sharded prediction, gathered in split order.

    Returns ``{top1, top5, mean_class_accuracy}`` on rank 0, None on the others.
    """
    distmod.sync_buffers(dist_info, core)
    probs = predict_all_ranks(core, loader, device, dist_info, len(labels), amp)
    if not dist_info.is_main:
        return None
    labels = np.asarray(labels)
    top1, top5 = top_k_accuracy(probs, labels, (1, 5))
    return {"top1": top1, "top5": top5, "mean_class_accuracy": mean_class_accuracy(probs, labels)}


def epoch_row(state, val, clock, lr):
    """The epochs.csv row of the epoch ``state`` is finishing (rank 0): ``lr`` at its first iteration,
    training loss/top-1 from the all-rank sums, ``val``'s accuracies, wall time incl. validation and
    training throughput."""
    loss_sum, correct, count = state.epoch_sums
    return {
        "epoch": state.epoch + 1,
        "lr": lr,
        "train_loss": loss_sum / count,
        "train_top1": correct / count,
        "val_top1": val["top1"],
        "val_top5": val["top5"],
        "seconds": clock.seconds(),
        "samples_per_s": count / clock.train_seconds,
    }
