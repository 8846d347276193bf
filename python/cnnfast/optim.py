"""Optimizers and learning-rate schedules.

Optimizers (SGD, Adam, AdamW): each `step()` applies one C++ update in place to every parameter
from its `.grad`. Schedules (OneCycleLR, CosineAnnealing, StepLR) set an optimizer's `lr` from the
number of steps taken: call `schedule.step()` after every `optimizer.step()`.

    optimizer = AdamW(model.parameters(), lr=3e-3, weight_decay=1e-2)
    schedule = OneCycleLR(optimizer, max_lr=3e-3, total_steps=epochs * batches_per_epoch)
    ...  # each batch: forward, loss, backward, optimizer.step(), schedule.step()
"""

from __future__ import annotations

import math

import numpy as np

from . import functional as F
from .nn import Parameter


class SGD:
    """SGD with momentum (PyTorch's rule): v = momentum*v + g; p -= lr*v."""

    def __init__(self, params: list[Parameter], lr: float = 0.01, momentum: float = 0.9, weight_decay: float = 0.0):
        if not lr > 0:
            raise ValueError(f"lr must be > 0, got {lr}")
        self.params, self.lr, self.momentum, self.weight_decay = list(params), lr, momentum, weight_decay
        self.velocity = [np.zeros_like(p.data) for p in self.params]

    def step(self) -> None:
        for p, v in zip(self.params, self.velocity):
            F.sgd_step(p.data, p.grad, v, self.lr, self.momentum, self.weight_decay)

    def state(self) -> dict:
        return {f"velocity.{i}": v for i, v in enumerate(self.velocity)}

    def load_state(self, state: dict) -> None:
        for i, v in enumerate(self.velocity):
            v[...] = state[f"velocity.{i}"]


class Adam:
    """Adam (PyTorch's rule), bias-corrected, `t` counting steps from 1."""

    def __init__(
        self,
        params: list[Parameter],
        lr: float = 1e-3,
        betas=(0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
    ):
        if not lr > 0:
            raise ValueError(f"lr must be > 0, got {lr}")
        self.params, self.lr, self.betas, self.eps, self.weight_decay = list(params), lr, betas, eps, weight_decay
        self.m = [np.zeros_like(p.data) for p in self.params]
        self.v = [np.zeros_like(p.data) for p in self.params]
        self.t = 0

    def step(self) -> None:
        self.t += 1
        for p, m, v in zip(self.params, self.m, self.v):
            F.adam_step(
                p.data, p.grad, m, v, self.t, self.lr, self.betas[0], self.betas[1], self.eps, self.weight_decay
            )

    def state(self) -> dict:
        state = {"t": np.array(self.t)}
        state.update({f"m.{i}": m for i, m in enumerate(self.m)})
        state.update({f"v.{i}": v for i, v in enumerate(self.v)})
        return state

    def load_state(self, state: dict) -> None:
        self.t = int(state["t"])
        for i, (m, v) in enumerate(zip(self.m, self.v)):
            m[...] = state[f"m.{i}"]
            v[...] = state[f"v.{i}"]


class AdamW(Adam):
    """AdamW (PyTorch's rule): weight decay decoupled from the gradient. Each step first shrinks
    every parameter, p *= 1 - lr*weight_decay, then applies Adam's update with the plain
    gradient. The same state as Adam (t, m, v); weight_decay defaults to PyTorch's 1e-2."""

    def __init__(
        self,
        params: list[Parameter],
        lr: float = 1e-3,
        betas=(0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
    ):
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)

    def step(self) -> None:
        self.t += 1
        for p, m, v in zip(self.params, self.m, self.v):
            F.adamw_step(
                p.data, p.grad, m, v, self.t, self.lr, self.betas[0], self.betas[1], self.eps, self.weight_decay
            )


# ---------------------------------------------------------------- learning-rate schedules


class LRScheduler:
    """A learning rate that depends on the number of optimizer steps taken: `lr_at(step)` is
    its closed form. Built on an optimizer (SGD, Adam, AdamW), it sets `optimizer.lr` to
    lr_at(0) at once; call `step()` after every `optimizer.step()` to move to the next value.
    `state()` / `load_state()` hold the step count (what a checkpoint needs: the values are a
    function of it, so a resumed run gets the same learning rates bit for bit)."""

    def __init__(self, optimizer):
        self.optimizer = optimizer
        self.last_step = 0
        self._apply()

    def lr_at(self, step: int) -> float:
        raise NotImplementedError

    def _apply(self) -> None:
        self.optimizer.lr = self.lr_at(self.last_step)

    @property
    def lr(self) -> float:
        """The learning rate of the next optimizer step."""
        return self.optimizer.lr

    def step(self) -> None:
        self.last_step += 1
        self._apply()

    def state(self) -> dict:
        return {"step": self.last_step}

    def load_state(self, state: dict) -> None:
        step = int(state["step"])
        if step < 0:
            raise ValueError(f"a schedule's step count must be >= 0, got {step}")
        self.last_step = step
        self._apply()

    def __repr__(self):
        return f"{type(self).__name__}(step {self.last_step}, lr {self.lr:.4g})"


def _positive_int(name: str, value) -> int:
    if int(value) != value or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value}")
    return int(value)


def _cos_anneal(start: float, end: float, pct: float) -> float:
    """From start (pct 0) to end (pct 1) along half a cosine."""
    return end + (start - end) / 2.0 * (math.cos(math.pi * pct) + 1.0)


class OneCycleLR(LRScheduler):
    """The one-cycle policy (Smith & Topin), with PyTorch's OneCycleLR semantics (two phases,
    cosine annealing): the learning rate rises from max_lr/div_factor to max_lr over the first
    pct_start of total_steps, then falls to max_lr/(div_factor*final_div_factor) at step
    total_steps-1 (and stays there after it, where PyTorch raises an error).

    With cycle_momentum (PyTorch's default) the momentum moves the other way, from
    max_momentum down to base_momentum while the learning rate rises, and back: SGD's
    `momentum`, or beta1 of Adam / AdamW (their `betas[0]`)."""

    def __init__(
        self,
        optimizer,
        max_lr: float,
        total_steps: int,
        pct_start: float = 0.3,
        div_factor: float = 25.0,
        final_div_factor: float = 1e4,
        cycle_momentum: bool = True,
        base_momentum: float = 0.85,
        max_momentum: float = 0.95,
    ):
        if not max_lr > 0:
            raise ValueError(f"max_lr must be > 0, got {max_lr}")
        if not 0.0 <= pct_start <= 1.0:
            raise ValueError(f"pct_start must be in [0, 1], got {pct_start}")
        if not (div_factor > 0 and final_div_factor > 0):
            raise ValueError("div_factor and final_div_factor must be > 0")
        if cycle_momentum and not 0.0 <= base_momentum <= max_momentum < 1.0:
            raise ValueError(f"need 0 <= base_momentum <= max_momentum < 1, got {base_momentum}, {max_momentum}")
        self.max_lr, self.total_steps = float(max_lr), _positive_int("total_steps", total_steps)
        self.pct_start, self.div_factor, self.final_div_factor = float(pct_start), div_factor, final_div_factor
        self.initial_lr = self.max_lr / div_factor
        self.min_lr = self.initial_lr / final_div_factor
        self.cycle_momentum, self.base_momentum, self.max_momentum = cycle_momentum, base_momentum, max_momentum
        # PyTorch's phases: (last step of the phase, start and end lr, start and end momentum)
        self.phases = [
            (float(pct_start * self.total_steps) - 1, self.initial_lr, self.max_lr, max_momentum, base_momentum),
            (float(self.total_steps - 1), self.max_lr, self.min_lr, base_momentum, max_momentum),
        ]
        super().__init__(optimizer)

    def _phase(self, step: int) -> tuple[float, float, float, float, float]:
        """(pct, start lr, end lr, start momentum, end momentum) of the phase `step` is in."""
        start_step = 0.0
        for i, (end_step, lr0, lr1, m0, m1) in enumerate(self.phases):
            if step <= end_step or i == len(self.phases) - 1:
                pct = (step - start_step) / (end_step - start_step) if end_step > start_step else 1.0
                return min(pct, 1.0), lr0, lr1, m0, m1
            start_step = end_step
        raise AssertionError("unreachable")

    def lr_at(self, step: int) -> float:
        pct, lr0, lr1, _, _ = self._phase(step)
        return _cos_anneal(lr0, lr1, pct)

    def momentum_at(self, step: int) -> float:
        pct, _, _, m0, m1 = self._phase(step)
        return _cos_anneal(m0, m1, pct)

    def _apply(self) -> None:
        super()._apply()
        if not self.cycle_momentum:
            return
        momentum = self.momentum_at(self.last_step)
        if hasattr(self.optimizer, "betas"):
            self.optimizer.betas = (momentum, self.optimizer.betas[1])
        else:
            self.optimizer.momentum = momentum


class CosineAnnealing(LRScheduler):
    """Linear warm-up, then cosine annealing: for step t < warmup_steps the learning rate is
    lr * (t+1) / warmup_steps (reaching lr at the warm-up's last step); from t = warmup_steps it
    is min_lr + (lr - min_lr) * (1 + cos(pi * p)) / 2 with p = (t - warmup_steps) /
    (total_steps - warmup_steps) (PyTorch's CosineAnnealingLR over the remaining steps), and
    min_lr from total_steps on. `lr` is the optimizer's learning rate when the schedule is built."""

    def __init__(self, optimizer, total_steps: int, warmup_steps: int = 0, min_lr: float = 0.0):
        self.total_steps = _positive_int("total_steps", total_steps)
        if int(warmup_steps) != warmup_steps or not 0 <= warmup_steps < self.total_steps:
            raise ValueError(f"warmup_steps must be an integer in [0, total_steps), got {warmup_steps}")
        self.base_lr, self.warmup_steps, self.min_lr = float(optimizer.lr), int(warmup_steps), float(min_lr)
        if not 0.0 <= self.min_lr <= self.base_lr:
            raise ValueError(f"min_lr must be in [0, lr = {self.base_lr:g}], got {min_lr}")
        super().__init__(optimizer)

    def lr_at(self, step: int) -> float:
        if step < self.warmup_steps:
            return self.base_lr * (step + 1) / self.warmup_steps
        progress = min(1.0, (step - self.warmup_steps) / (self.total_steps - self.warmup_steps))
        return self.min_lr + (self.base_lr - self.min_lr) * (1.0 + math.cos(math.pi * progress)) / 2.0


class StepLR(LRScheduler):
    """Step decay (PyTorch's StepLR): lr * gamma ** (t // step_size) after t calls of step().
    Its unit is whatever step() is called for: `python -m cnnfast.train` calls every schedule
    once per batch and gives step_size = epochs * batches per epoch, so the learning rate drops
    at epoch boundaries, as PyTorch's StepLR stepped once per epoch does."""

    def __init__(self, optimizer, step_size: int, gamma: float = 0.1):
        self.step_size = _positive_int("step_size", step_size)
        if not gamma > 0:
            raise ValueError(f"gamma must be > 0, got {gamma}")
        self.base_lr, self.gamma = float(optimizer.lr), float(gamma)
        super().__init__(optimizer)

    def lr_at(self, step: int) -> float:
        return self.base_lr * self.gamma ** (step // self.step_size)
