"""The loop of the small networks the harness trains once and then caches (the domain classifier and its
recognizer, the noise-aware classifier, the autoencoder): AdamW under a one-cycle learning rate (Smith &
Topin 2019), one ``step(loss)`` per batch, with a progress bar or lines."""

from __future__ import annotations

import torch
from torch import Tensor

from ..progress import Progress


class OneCycle:
    def __init__(self, params, lr: float, steps: int, what: str, *, weight_decay: float = 0.01, progress=None):
        self.optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
        self.schedule = torch.optim.lr_scheduler.OneCycleLR(self.optimizer, max_lr=lr, total_steps=steps)
        self.bar = Progress(steps, f"{what} (trained once, then cached)", enabled=progress)

    def step(self, loss: Tensor) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.schedule.step()
        self.bar.update(1)

    def close(self) -> None:
        """The bar closed, and no stale gradient left on the weights, which are frozen from here on."""
        self.bar.close()
        self.optimizer.zero_grad(set_to_none=True)
