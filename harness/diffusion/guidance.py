"""Classifier-free guidance (Ho & Salimans 2022) as a wrapper around the model.

Samplers never know guidance exists: they call a model with the usual contract ``model(x_t, t, y)``.
The guided output is (1 + w) * cond - w * uncond, so w = 0 is the conditional model alone; this is
diffusers' ``guidance_scale`` s = 1 + w.
"""

from __future__ import annotations

import torch
from torch import Tensor


def classifier_free(model, w: float, null_label: int):
    """Return a model whose output is (1 + w) f(x, t, y) - w f(x, t, null), in one batched call."""

    def guided(x_t: Tensor, t: Tensor, y: Tensor) -> Tensor:
        y_null = torch.full_like(y, null_label)
        out = model(torch.cat([x_t, x_t]), torch.cat([t, t]), torch.cat([y, y_null]))  # (2B, ...)
        cond, uncond = out.chunk(2)
        return cond + w * (cond - uncond)

    return guided
