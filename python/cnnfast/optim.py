"""Optimizers: each `step()` applies one C++ update in place to every parameter from its `.grad`."""

from __future__ import annotations

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
