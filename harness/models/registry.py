"""The denoising backbones by name (``model.backbone``), and the size of a network in parameters and FLOPs.

A backbone is a network class with the call ``model(x_t, t, y)`` (plus ``null_label``, ``num_classes`` and
``num_parameters``) and one ``Backbone`` entry in ``BACKBONES``: how to build it from the ``model``
section of a config, how to check that section (a ValueError naming the field), and which ``model.*``
fields it reads. Only those fields enter the config hash (``config.ModelConfig.identity``).

The builders receive the config's ``model`` section as an object with attributes; this module sits
below ``harness.config`` and does not import it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from . import dit, unet

SHARED_FIELDS = ("dropout", "conditional")  # every backbone reads these


@dataclass(frozen=True)
class Backbone:
    build: Callable[[Any, int, int, int | None], nn.Module]  # (model section, C, image side, classes or None)
    check: Callable[[Any, int], None]  # (model section, image side): raise ValueError("field: why")
    fields: tuple[str, ...]  # the model.* fields it reads, besides SHARED_FIELDS


BACKBONES: dict[str, Backbone] = {
    "unet": Backbone(
        build=lambda m, c_in, size, classes: unet.UNet(
            in_channels=c_in,
            image_size=size,
            channels=m.channels,
            channel_mult=m.channel_mult,
            num_res_blocks=m.num_res_blocks,
            attention_resolutions=m.attention_resolutions,
            dropout=m.dropout,
            num_classes=classes,
        ),
        check=lambda m, size: unet.check_shape(size, m.channels, m.channel_mult, m.attention_resolutions),
        fields=("channels", "channel_mult", "num_res_blocks", "attention_resolutions"),
    ),
    "dit": Backbone(
        build=lambda m, c_in, size, classes: dit.DiT(
            in_channels=c_in,
            image_size=size,
            patch_size=m.patch_size,
            depth=m.depth,
            hidden=m.hidden,
            heads=m.heads,
            dropout=m.dropout,
            num_classes=classes,
        ),
        check=lambda m, size: dit.check_shape(size, m.patch_size, m.hidden, m.heads),
        fields=("patch_size", "depth", "hidden", "heads"),
    ),
}


def gflops_per_image(build: Callable[[], nn.Module], image_shape: Sequence[int]) -> float:
    """GFLOPs of one forward pass of ``build()`` on a batch of one image of ``image_shape`` (C, H, W).

    Counted by ``torch.utils.flop_counter.FlopCounterMode``: matrix products, convolutions and attention,
    a multiply-add as 2 FLOPs (the DiT paper's "Gflops" count a multiply-add once: half of these); norms and
    activations are not counted. The network is built and run on the meta device: nothing is computed,
    and attention is counted whatever kernel a real device would pick (the counter has no formula for
    the CPU's fused attention and would count it as zero).
    """
    from torch.utils.flop_counter import FlopCounterMode

    with torch.device("meta"):
        model = build()
        x, t = torch.zeros(1, *image_shape), torch.zeros(1, dtype=torch.long)
        y = torch.zeros(1, dtype=torch.long) if model.num_classes else None
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(x, t, y)
    return counter.get_total_flops() / 1e9
