"""PYSKL's optimiser and the learning-rate schedules (REFERENCE §5, §14).

SGD with Nesterov momentum and weight decay on every parameter (BN weights, biases and the
learned graph offsets ``PA`` included: PYSKL has no parameter groups), and one of two schedules,
both set before every iteration and both resumable (``state_dict``):

* ``CosineSchedule`` (PYSKL): cosine annealing evaluated per iteration, to 0, without warm-up:
  lr_i = 0.5 · lr · (1 + cos(π · i / max_iters)), i = 0 … max_iters − 1 (mmcv's
  ``annealing_cos`` with min_lr 0).
* ``MultiStepSchedule`` (MS-G3D's Kinetics recipe): lr_e = lr · gamma^(number of steps <= e) for
  the 0-based epoch e of the iteration (MS-G3D's ``adjust_learning_rate``, whose epochs are
  0-based too), constant within an epoch.
"""

import math

import torch


def build_optimizer(model, lr, momentum, nesterov, weight_decay):
    """One parameter group holding all of ``model``'s parameters."""
    return torch.optim.SGD(
        model.parameters(), lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay
    )


def cosine_lr(base_lr, iteration, max_iters):
    """Learning rate of (0-based) ``iteration`` out of ``max_iters``.

    Evaluated in mmcv's order (progress fraction first), so the floats equal PYSKL's.
    """
    return 0.5 * base_lr * (math.cos(math.pi * (iteration / max_iters)) + 1)


class _Schedule:
    """Sets the optimiser's learning rate before each iteration (``apply``); the rate is a function
    of the iteration, so resuming only checks that a checkpoint's ``state_dict`` is this one's."""

    def __init__(self, optimizer, base_lr, max_iters):
        if max_iters < 1:
            raise ValueError(f"max_iters must be >= 1, got {max_iters}")
        self.optimizer = optimizer
        self.base_lr = base_lr
        self.max_iters = max_iters

    def apply(self, iteration):
        """Set the rate of ``iteration`` on every parameter group; returns it."""
        lr = self.lr_at(iteration)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        return lr

    def load_state_dict(self, state):
        """ValueError naming both schedules unless ``state`` (a checkpoint's) is this one's."""
        mine = self.state_dict()
        # checkpoints written before the multi-step schedule existed hold no "kind": cosine
        theirs = {"kind": "cosine", **state}
        if theirs != mine:
            raise ValueError(f"checkpoint schedule ({_describe(theirs)}) does not match this run's ({_describe(mine)})")


def _describe(state):
    return ", ".join(f"{key} {value}" for key, value in sorted(state.items()))


class CosineSchedule(_Schedule):
    """PYSKL's per-iteration cosine annealing to 0."""

    def lr_at(self, iteration):
        return cosine_lr(self.base_lr, iteration, self.max_iters)

    def state_dict(self):
        return {"kind": "cosine", "base_lr": self.base_lr, "max_iters": self.max_iters}


class MultiStepSchedule(_Schedule):
    """MS-G3D's step decay: the rate of 0-based epoch e is ``base_lr * gamma ** (number of steps <= e)``."""

    def __init__(self, optimizer, base_lr, max_iters, iters_per_epoch, steps, gamma):
        super().__init__(optimizer, base_lr, max_iters)
        if iters_per_epoch < 1:
            raise ValueError(f"iters_per_epoch must be >= 1, got {iters_per_epoch}")
        self.iters_per_epoch = iters_per_epoch
        self.steps = [int(step) for step in steps]
        self.gamma = gamma

    def lr_at(self, iteration):
        epoch = iteration // self.iters_per_epoch
        return self.base_lr * self.gamma ** sum(epoch >= step for step in self.steps)

    def state_dict(self):
        return {"kind": "multistep", "base_lr": self.base_lr, "max_iters": self.max_iters,
                "iters_per_epoch": self.iters_per_epoch, "steps": self.steps, "gamma": self.gamma}


def build_schedule(hp, optimizer, base_lr, max_iters, iters_per_epoch):
    """The schedule ``hp.lr_schedule`` names (``msg3d.engine.hparams.HParams``)."""
    if hp.lr_schedule == "multistep":
        return MultiStepSchedule(optimizer, base_lr, max_iters, iters_per_epoch, hp.lr_steps, hp.lr_gamma)
    return CosineSchedule(optimizer, base_lr, max_iters)
