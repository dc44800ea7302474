"""PYSKL's optimiser and learning-rate schedule (REFERENCE §5).

SGD with Nesterov momentum and weight decay on every parameter (BN weights, biases and the
learned graph offsets ``PA`` included: PYSKL has no parameter groups), and cosine annealing
evaluated per iteration, to 0, without warm-up: lr_i = 0.5 · lr · (1 + cos(π · i / max_iters)),
i = 0 … max_iters − 1 (mmcv's ``annealing_cos`` with min_lr 0).
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


class CosineSchedule:
    """Sets the optimiser's learning rate before each iteration; ``state_dict`` for resuming."""

    def __init__(self, optimizer, base_lr, max_iters):
        if max_iters < 1:
            raise ValueError(f"max_iters must be >= 1, got {max_iters}")
        self.optimizer = optimizer
        self.base_lr = base_lr
        self.max_iters = max_iters

    def lr_at(self, iteration):
        return cosine_lr(self.base_lr, iteration, self.max_iters)

    def apply(self, iteration):
        """Set the rate of ``iteration`` on every parameter group; returns it."""
        lr = self.lr_at(iteration)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        return lr

    def state_dict(self):
        return {"base_lr": self.base_lr, "max_iters": self.max_iters}

    def load_state_dict(self, state):
        if state["max_iters"] != self.max_iters or state["base_lr"] != self.base_lr:
            raise ValueError(
                f"checkpoint schedule (lr {state['base_lr']}, {state['max_iters']} iterations) does not "
                f"match this run's (lr {self.base_lr}, {self.max_iters} iterations)"
            )
