"""The DDPM U-Net (Ho et al. 2020, appendix B; improved-diffusion's layout), sized for small images.

Every residual block receives the timestep embedding (plus the class embedding when conditional),
so the noise level reaches every resolution. The class table has one extra "null" row, index
``num_classes``, which classifier-free guidance uses as "no label".
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def timestep_embedding(t: Tensor, dim: int, max_period: float = 10_000.0) -> Tensor:
    """Sinusoidal embedding of integer timesteps (Vaswani et al. 2017): (B,) -> (B, dim)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=1)


HEAD_CHANNELS = 32  # attention heads have at least this many channels


def num_heads(c: int) -> int:
    return max(1, c // HEAD_CHANNELS)


def resolutions(image_size: int, levels: int) -> list[int]:
    """The feature-map side at each level: halved, rounded up, after every level but the last."""
    out = [image_size]
    for _ in range(levels - 1):
        out.append((out[-1] + 1) // 2)
    return out


def check_shape(image_size: int, channels: int, channel_mult: Sequence[int], attention_resolutions: Sequence[int]):
    """Raise ValueError, naming the argument, for a U-Net that cannot be built or run (or attention it never uses)."""
    if not channel_mult or min(channel_mult) < 1:
        raise ValueError(f"channel_mult: {list(channel_mult)} needs at least one level, each a multiple >= 1")
    if channels % 2:
        raise ValueError(f"channels: {channels} is odd; the sinusoidal time embedding needs an even width")
    res = resolutions(image_size, len(channel_mult))
    for r in attention_resolutions:
        if r not in res:
            raise ValueError(
                f"attention_resolutions: {r} is never reached; with {image_size}x{image_size} images and "
                f"{len(channel_mult)} levels the model works at {', '.join(map(str, res))}"
            )
    # The middle block always attends, at the last level's width.
    widths = [channels * m for m, r in zip(channel_mult, res) if r in attention_resolutions]
    widths.append(channels * channel_mult[-1])
    for c in widths:
        if c % num_heads(c):
            raise ValueError(
                f"channels: attention at width {c} uses {num_heads(c)} heads, which do not divide it; "
                f"choose channels so that every attention width divides into heads of >= {HEAD_CHANNELS}"
            )


def _norm(c: int) -> nn.GroupNorm:
    # DDPM's GroupNorm(32) has 4+ channels per group at its widths. Narrow models keep at least 4 per
    # group: a group of one channel is instance norm, which erases each image's brightness and makes
    # samples with grey or white backgrounds.
    groups = max(g for g in range(1, 33) if c % g == 0 and c // g >= 4) if c >= 4 else 1
    return nn.GroupNorm(groups, c)


def _zero(module: nn.Module) -> nn.Module:
    # Residual branches start as the identity, as in improved-diffusion (zero_module).
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class ResBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, emb_dim: int, dropout: float):
        super().__init__()
        self.norm1, self.conv1 = _norm(c_in), nn.Conv2d(c_in, c_out, 3, padding=1)
        self.emb = nn.Linear(emb_dim, c_out)  # per-channel shift from the (t, y) embedding
        self.norm2, self.dropout = _norm(c_out), nn.Dropout(dropout)
        self.conv2 = _zero(nn.Conv2d(c_out, c_out, 3, padding=1))
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:  # x (B, C_in, H, W), emb (B, E)
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.emb(F.silu(emb))[:, :, None, None]
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return self.skip(x) + h


class Attention(nn.Module):
    """Multi-head self-attention over the H*W positions, residual."""

    def __init__(self, c: int):
        super().__init__()
        self.heads = num_heads(c)
        self.norm, self.qkv = _norm(c), nn.Conv2d(c, 3 * c, 1)
        self.proj = _zero(nn.Conv2d(c, c, 1))

    def forward(self, x: Tensor, emb: Tensor | None = None) -> Tensor:
        B, C, H, W = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(B, 3, self.heads, C // self.heads, H * W).unbind(1)
        h = F.scaled_dot_product_attention(q.transpose(-1, -2), k.transpose(-1, -2), v.transpose(-1, -2))
        return x + self.proj(h.transpose(-1, -2).reshape(B, C, H, W))


class Level(nn.Module):
    """The blocks of one resolution: residual blocks, each optionally followed by attention."""

    def __init__(self, blocks: list[ResBlock], attns: list[nn.Module], resolution: int):
        super().__init__()
        self.blocks, self.attns, self.resolution = nn.ModuleList(blocks), nn.ModuleList(attns), resolution


class UNet(nn.Module):
    def __init__(
        self,
        in_channels: int = 1,
        image_size: int = 28,
        channels: int = 32,
        channel_mult: Sequence[int] = (1, 2, 2),
        num_res_blocks: int = 1,
        attention_resolutions: Sequence[int] = (7,),
        dropout: float = 0.0,
        num_classes: int | None = None,
    ):
        super().__init__()
        self.channels, self.num_classes = channels, num_classes
        emb_dim = 4 * channels
        self.time_mlp = nn.Sequential(nn.Linear(channels, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        # One extra row: index num_classes is the null label used for classifier-free guidance.
        self.class_emb = nn.Embedding(num_classes + 1, emb_dim) if num_classes else None
        self.null_label = num_classes

        def attn(c: int, res: int) -> nn.Module:
            return Attention(c) if res in attention_resolutions else nn.Identity()

        self.stem = nn.Conv2d(in_channels, channels, 3, padding=1)
        skip_channels, c, res = [channels], channels, image_size
        self.down, self.downsample = nn.ModuleList(), nn.ModuleList()
        for level, mult in enumerate(channel_mult):
            blocks, attns = [], []
            for _ in range(num_res_blocks):
                blocks.append(ResBlock(c, channels * mult, emb_dim, dropout))
                c = channels * mult
                attns.append(attn(c, res))
                skip_channels.append(c)
            self.down.append(Level(blocks, attns, res))
            if level < len(channel_mult) - 1:
                self.downsample.append(nn.Conv2d(c, c, 3, stride=2, padding=1))
                skip_channels.append(c)
                res = (res + 1) // 2
        self.mid = Level(
            [ResBlock(c, c, emb_dim, dropout), ResBlock(c, c, emb_dim, dropout)], [Attention(c), nn.Identity()], res
        )
        self.up, self.upsample = nn.ModuleList(), nn.ModuleList()
        for level, mult in reversed(list(enumerate(channel_mult))):
            blocks, attns = [], []
            for _ in range(num_res_blocks + 1):
                blocks.append(ResBlock(c + skip_channels.pop(), channels * mult, emb_dim, dropout))
                c = channels * mult
                attns.append(attn(c, res))
            self.up.append(Level(blocks, attns, res))
            if level > 0:
                self.upsample.append(nn.Conv2d(c, c, 3, padding=1))
                res = res * 2
        self.out = nn.Sequential(_norm(c), nn.SiLU(), _zero(nn.Conv2d(c, in_channels, 3, padding=1)))

    @property
    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def levels(self) -> list[Level]:
        """Every resolution level in forward order (encoder, middle, decoder)."""
        return [*self.down, self.mid, *self.up]

    def embed(self, t: Tensor, y: Tensor | None) -> Tensor:
        emb = self.time_mlp(timestep_embedding(t, self.channels))
        if self.class_emb is not None:
            if y is None:  # a conditional model asked for p(x): the null label
                y = torch.full_like(t, self.null_label)
            emb = emb + self.class_emb(y)
        return emb

    def forward(self, x: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
        """x_t (B, C, H, W), t long (B,) in [0, T), y long (B,) or None -> network output (B, C, H, W)."""
        emb = self.embed(t, y)  # (B, 4 * channels)
        h = self.stem(x)
        skips = [h]
        for i, level in enumerate(self.down):
            for block, attn in zip(level.blocks, level.attns):
                h = attn(block(h, emb))
                skips.append(h)
            if i < len(self.downsample):
                h = self.downsample[i](h)
                skips.append(h)
        for block, attn in zip(self.mid.blocks, self.mid.attns):
            h = attn(block(h, emb))
        for i, level in enumerate(self.up):
            for block, attn in zip(level.blocks, level.attns):
                h = attn(block(torch.cat([h, skips.pop()], dim=1), emb))
            if i < len(self.upsample):
                # Nearest-neighbour x2, cropped to the skip's size (odd sizes such as 7 -> 4 -> 7).
                h = F.interpolate(h, size=skips[-1].shape[-2:], mode="nearest")
                h = self.upsample[i](h)
        return self.out(h)
