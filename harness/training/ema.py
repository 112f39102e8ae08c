"""Exponential moving average of the weights, the model every evaluation samples from."""

from __future__ import annotations

import copy

import torch
from torch import nn


class EMA:
    """theta_ema <- d theta_ema + (1 - d) theta, with d = min(decay, (1 + n) / (10 + n)).

    The warm-up (TensorFlow's ``num_updates`` rule) keeps early averages from being dominated by the
    random initialization when runs are short, as ablation runs on a CPU are.
    """

    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        self.model = copy.deepcopy(model).eval().requires_grad_(False)
        self.updates = 0
        self._lists: tuple | None = None  # (source model, its tensors, ours): walked once, not every step

    def _tensors(self, model: nn.Module) -> tuple[list, list, list, list]:
        if self._lists is None or self._lists[0] is not model:
            ours, theirs = self.model, model
            self._lists = (
                model,
                list(ours.parameters()),
                list(theirs.parameters()),
                list(ours.buffers()),
                list(theirs.buffers()),
            )
        return self._lists[1:]

    def current_decay(self) -> float:
        return min(self.decay, (1 + self.updates) / (10 + self.updates))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        ema_params, params, ema_buffers, buffers = self._tensors(model)
        torch._foreach_lerp_(ema_params, params, 1.0 - self.current_decay())
        if buffers:
            torch._foreach_copy_(ema_buffers, buffers)
        self.updates += 1

    def state_dict(self) -> dict:
        return {"model": self.model.state_dict(), "updates": self.updates}

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.updates = int(state["updates"])
