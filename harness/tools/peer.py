"""The peer of ``harness bench --peer``: diffusers' ``UNet2DModel`` of our UNet's size, trained the tutorial way.

``harness bench`` reports the GFLOP/s our UNet achieves, but a utilization figure alone cannot say whether
our network is written well: small convolutions on 28x28 images never reach a machine's matmul peak. The
peer answers "is our UNet as efficient per FLOP as the reference implementation?" by timing diffusers'
``UNet2DModel`` with the same layout (three levels 28, 14, 7; one residual block per level going down and
two going up; attention at 7x7 and in the middle; sinusoidal time embedding through a 4x-wide MLP; a class
embedding added to it) and about the same parameter count, on the same data, batch and device.

The peer runs the loop of diffusers' basic training tutorial: ``DDPMScheduler.add_noise``,
``model(x_t, t).sample``, MSE against the noise, AdamW, fp32, eager; ours runs the same loop as
``bench.bare_loop``. That loop has no EMA, no label dropout, no loss buckets and no tracking, so the time
per step is the network's forward and backward plus one optimizer step and nothing else; the harness's own
extras are measured separately by the bench (harness loop against its bare loop). Comparing the two bare
loops, FLOPs per second against FLOPs per second, compares the two networks.

diffusers is optional (``pip install -e '.[peer]'``) and imported only inside the functions here.
"""

from __future__ import annotations

import time
from functools import lru_cache

import torch
import torch.nn.functional as F

# Three resolution levels with attention at the last (7x7 for MNIST), as the bench's UNet; the widths are
# (w, 2w, 2w) like its channel_mult (1, 2, 2).
DOWN_BLOCKS = ("DownBlock2D", "DownBlock2D", "AttnDownBlock2D")
UP_BLOCKS = ("AttnUpBlock2D", "UpBlock2D", "UpBlock2D")
WIDTH_MULT = (1, 2, 2)
# GroupNorm's group count is one number for the whole UNet2DModel; 8 divides every width in the grid.
NORM_GROUPS = 8
WIDTHS = range(NORM_GROUPS, 257, NORM_GROUPS)  # w of the first level
LAYERS_PER_BLOCK = (1, 2)  # residual blocks per level going down; diffusers adds one more going up
NUM_TRAIN_TIMESTEPS = 1000
LR = 1e-4  # the tutorial's; the time per step does not depend on it


class PeerUnavailable(RuntimeError):
    """diffusers is not installed; the message says how to install it."""


def diffusers_module():
    """diffusers, or ``PeerUnavailable``: asked before a bench starts, so it never fails after minutes of rounds."""
    try:
        import diffusers
    except ImportError as err:
        raise PeerUnavailable("harness bench --peer needs diffusers: pip install -e '.[peer]'") from err
    return diffusers


def _unet(width: int, layers_per_block: int, channels: int, image_size: int, num_classes: int) -> torch.nn.Module:
    return diffusers_module().UNet2DModel(
        sample_size=image_size,
        in_channels=channels,
        out_channels=channels,
        block_out_channels=tuple(m * width for m in WIDTH_MULT),
        layers_per_block=layers_per_block,
        down_block_types=DOWN_BLOCKS,
        up_block_types=UP_BLOCKS,
        norm_num_groups=NORM_GROUPS,
        # One head spanning all channels, as ours has below 64 channels (its heads are >= 32 channels wide).
        attention_head_dim=None,
        # Label num_classes is the null label of classifier-free guidance, as in our UNet's embedding.
        num_class_embeds=num_classes + 1,
    )


def _num_parameters(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@lru_cache
def peer_config(channels: int, image_size: int, num_classes: int, target_parameters: int) -> tuple[int, int]:
    """(w, layers_per_block) of the grid whose UNet2DModel's parameter count is nearest ``target_parameters``."""
    if image_size % 2 ** (len(WIDTH_MULT) - 1):
        # UNet2DModel's nearest-neighbour upsampling doubles 7 to 14 and 14 to 28, but 13 back to 26, not 25.
        raise ValueError(f"the peer UNet2DModel needs an image size divisible by 4; got {image_size}")

    def count(width: int, layers: int) -> int:
        with torch.device("meta"):  # shapes only: the grid is built without allocating or initializing weights
            return _num_parameters(_unet(width, layers, channels, image_size, num_classes))

    def misses():  # (|count - target|, w, layers_per_block); the count grows with w, so stop past the target
        for layers in LAYERS_PER_BLOCK:
            for width in WIDTHS:
                n = count(width, layers)
                yield abs(n - target_parameters), width, layers
                if n >= target_parameters:
                    break

    _, width, layers = min(misses())
    return width, layers


def peer_model(channels: int, image_size: int, num_classes: int, target_parameters: int) -> torch.nn.Module:
    """diffusers' class-conditional UNet2DModel, laid out like the bench's UNet, sized to ``target_parameters``."""
    width, layers = peer_config(channels, image_size, num_classes, target_parameters)
    return _unet(width, layers, channels, image_size, num_classes)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peer_loop(
    data, batch: int, steps: int, device: torch.device, target_parameters: int, warmup: int = 3
) -> tuple[float, int]:
    """diffusers' basic training tutorial, fp32 eager, with class labels: (seconds per step, parameters).

    The batches are drawn as in ``bench.bare_loop``: random indices into the data set held on the device.
    """
    scheduler = diffusers_module().DDPMScheduler(num_train_timesteps=NUM_TRAIN_TIMESTEPS)
    torch.manual_seed(0)
    model = peer_model(data.channels, data.image_size, data.num_classes, target_parameters).to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=LR)
    images, labels = data.images.to(device), data.labels.to(device)
    for i in range(warmup + steps):
        if i == warmup:
            _sync(device)
            start = time.perf_counter()
        idx = torch.randint(0, images.shape[0], (batch,), device=device)
        x0, y = images[idx], labels[idx]  # (B, C, H, W), (B,)
        noise = torch.randn_like(x0)
        t = torch.randint(0, NUM_TRAIN_TIMESTEPS, (batch,), device=device)
        x_t = scheduler.add_noise(x0, noise, t)
        loss = F.mse_loss(model(x_t, t, class_labels=y).sample, noise)
        opt.zero_grad()
        loss.backward()
        opt.step()
    _sync(device)
    return (time.perf_counter() - start) / steps, _num_parameters(model)


def peer_step_flops(data, batch: int, target_parameters: int) -> float:
    """FLOPs of one training step of the peer (forward and backward) from torch's flop counter."""
    from torch.utils.flop_counter import FlopCounterMode

    scheduler = diffusers_module().DDPMScheduler(num_train_timesteps=NUM_TRAIN_TIMESTEPS)
    model = peer_model(data.channels, data.image_size, data.num_classes, target_parameters)
    x0, y = data.images[:batch], data.labels[:batch]
    t = torch.randint(0, NUM_TRAIN_TIMESTEPS, (x0.shape[0],))
    noise = torch.randn_like(x0)
    with FlopCounterMode(display=False) as counter:
        F.mse_loss(model(scheduler.add_noise(x0, noise, t), t, class_labels=y).sample, noise).backward()
    return counter.get_total_flops()
