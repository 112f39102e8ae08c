"""A small KL-regularized autoencoder (Rombach et al. 2022, "LDM", section 3 and appendix G), sized for digits.

The encoder maps an image x (C, H, W) in [-1, 1] to a diagonal Gaussian posterior q(z | x) over latents z of
shape (latent_channels, H / f, W / f), f the downsampling factor (a power of two); the decoder maps z back to
an image. Each factor of two is one stride-2 convolution (encoder) or one nearest upsampling and convolution
(decoder), so 28x28 digits become 14x14 (f = 2) or 7x7 (f = 4) latents.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

LOGVAR_RANGE = (-30.0, 20.0)  # the LDM clamp: exp(logvar) neither underflows nor overflows


def check_shape(image_size: int, downsample: int) -> None:
    """Raise ValueError, naming the field, when ``downsample`` is not a power of two dividing the image side."""
    if downsample < 1 or downsample & (downsample - 1):
        raise ValueError(f"downsample: {downsample} is not a power of two (1, 2, 4, ...)")
    if image_size % downsample:
        raise ValueError(f"downsample: {downsample} does not divide the {image_size}x{image_size} images")


@dataclass
class Posterior:
    """q(z | x) = N(mean, diag(exp(logvar))): mean and logvar (B, c, h, w)."""

    mean: Tensor
    logvar: Tensor

    def sample(self, generator: torch.Generator | None = None) -> Tensor:
        eps = torch.randn(self.mean.shape, generator=generator, device=self.mean.device, dtype=self.mean.dtype)
        return self.mean + (0.5 * self.logvar).exp() * eps

    def kl(self) -> Tensor:
        """KL(q(z | x) || N(0, I)) per latent element, averaged over each example: (B,)."""
        return 0.5 * (self.mean.pow(2) + self.logvar.exp() - 1.0 - self.logvar).flatten(1).mean(1)


def _block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1), nn.SiLU())


class Autoencoder(nn.Module):
    def __init__(self, in_channels: int, channels: int, latent_channels: int, downsample: int):
        super().__init__()
        levels = downsample.bit_length() - 1  # log2 f
        enc = [_block(in_channels, channels)]
        for _ in range(levels):  # (B, ch, H, W) -> (B, ch, H/2, W/2)
            enc += [nn.Conv2d(channels, channels, 3, stride=2, padding=1), nn.SiLU(), _block(channels, channels)]
        self.encoder = nn.Sequential(*enc, nn.Conv2d(channels, 2 * latent_channels, 1))  # -> mean, logvar
        dec = [_block(latent_channels, channels)]
        for _ in range(levels):  # (B, ch, h, w) -> (B, ch, 2h, 2w)
            dec += [nn.Upsample(scale_factor=2, mode="nearest"), _block(channels, channels)]
        self.decoder = nn.Sequential(*dec, nn.Conv2d(channels, in_channels, 3, padding=1))
        self.latent_channels, self.downsample = latent_channels, downsample

    def encode(self, x: Tensor) -> Posterior:  # (B, C, H, W) -> q(z | x) over (B, c, H/f, W/f)
        mean, logvar = self.encoder(x).chunk(2, dim=1)
        return Posterior(mean, logvar.clamp(*LOGVAR_RANGE))

    def decode(self, z: Tensor) -> Tensor:  # (B, c, h, w) -> (B, C, h f, w f), in [-1, 1]
        return torch.tanh(self.decoder(z))

    def loss(self, x: Tensor, kl_weight: float, generator: torch.Generator | None = None) -> Tensor:
        """Per example (B,): mean squared reconstruction error of a posterior sample + kl_weight * KL."""
        q = self.encode(x)
        x_hat = self.decode(q.sample(generator))
        return F.mse_loss(x_hat, x, reduction="none").flatten(1).mean(1) + kl_weight * q.kl()
