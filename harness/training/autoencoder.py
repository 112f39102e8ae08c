"""The latent space of ``data.space: latent``: a frozen autoencoder, trained once per data set and config.

Latent diffusion (Rombach et al. 2022) trains the diffusion model on z = s E(x) instead of x, where E is
a KL-regularized encoder and s the "scale factor" that gives the latents unit standard deviation, so the
noise schedule, which assumes data of about unit scale, fits them. The autoencoder (``models.autoencoder``)
is trained here on all but a held-out tenth of the data (the held-out digits measure its reconstructions),
s = 1 / std(E(x)) is computed on the same training split, and both are cached on disk under the data's
fingerprint and the ``autoencoder`` section's hash (atomic write, like ``evaluation.features``). Nothing
of it trains afterwards: the weights are frozen and the diffusion model learns fixed latents.

E(x) is the posterior mean, not a sample: with the small KL weights of LDM the posterior's spread is far
below the latents' and the data the diffusion model learns stays a fixed tensor, as pixels are.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from filelock import FileLock
from torch import Tensor

from ..config import AutoencoderConfig
from ..models.autoencoder import Autoencoder
from ..once import cache_folder, check_tensors, load_entry, unreadable
from .checkpoint import save_atomic
from .data import ImageData, split_indices
from .one_cycle import OneCycle

ARCH = "autoencoder-v1"  # change whenever the network or its recipe changes: old caches then miss
HOLDOUT_FRACTION, SPLIT_SEED = 0.1, 0  # the held-out digits of the reconstruction floor
ENCODE_BATCH = 1024


@dataclass(eq=False)
class LatentSpace:
    """A frozen autoencoder and its scale factor s: x -> z = s E(x), z -> D(z / s)."""

    autoencoder: Autoencoder  # eval mode, requires_grad False
    scale: float  # s = 1 / std of the training split's latents (LDM's scale_factor)
    fingerprint: str  # the cache key: data fingerprint and autoencoder config
    from_cache: bool  # loaded rather than trained in this call

    @property
    def device(self) -> torch.device:
        return next(self.autoencoder.parameters()).device

    @torch.no_grad()
    def encode(self, x: Tensor) -> Tensor:
        """Images (N, C, H, W) in [-1, 1] -> scaled latents (N, c, H/f, W/f), on x's device."""
        parts = [self.autoencoder.encode(b.to(self.device)).mean * self.scale for b in x.split(ENCODE_BATCH)]
        return torch.cat(parts).to(x.device)

    @torch.no_grad()
    def decode(self, z: Tensor) -> Tensor:
        """Scaled latents (N, c, h, w) -> images (N, C, h f, w f) in [-1, 1], on z's device."""
        parts = [self.autoencoder.decode(b.to(self.device) / self.scale) for b in z.split(ENCODE_BATCH)]
        return torch.cat(parts).to(z.device)

    def latent_data(self, data: ImageData) -> ImageData:
        """``data`` with its images replaced by their scaled latents: what the diffusion model learns."""
        z = self.encode(data.images)  # (N, c, h, w)
        key = f"{data.fingerprint}-{self.fingerprint}"
        return ImageData(f"{data.name}-latent", z, data.labels, data.num_classes, key)


def held_out(data: ImageData) -> tuple[Tensor, Tensor]:
    """(train, held-out) indices of ``data``: the autoencoder never sees the held-out digits."""
    return split_indices(len(data), HOLDOUT_FRACTION, SPLIT_SEED)


def config_key(ac: AutoencoderConfig) -> str:
    return hashlib.sha256(json.dumps(ac.model_dump(mode="json"), sort_keys=True).encode()).hexdigest()[:12]


def cache_path(data: ImageData, ac: AutoencoderConfig, cache_dir: str | Path) -> Path:
    """Where ``latent_space`` keeps the weights and scale factor for this data and ``autoencoder`` section."""
    return Path(cache_dir).expanduser() / f"{ARCH}-{data.fingerprint}-{config_key(ac)}.pt"


def train_autoencoder(
    data: ImageData, ac: AutoencoderConfig, *, device: str | torch.device = "cpu", progress: bool | None = None
) -> tuple[Autoencoder, float]:
    """Train on the training split for ``ac.steps`` AdamW steps (one-cycle learning rate, Smith & Topin 2019);
    return the frozen network and s = 1 / std of its latents of that split. Seeded (``SPLIT_SEED``) throughout,
    so CPU runs repeat bit for bit."""
    train_idx, _ = held_out(data)
    x = data.images[train_idx].to(device)  # (N, C, H, W)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(SPLIT_SEED)
        ae = Autoencoder(data.channels, ac.channels, ac.latent_channels, ac.downsample).to(device)
    gen = torch.Generator(device=device).manual_seed(SPLIT_SEED)
    loop = OneCycle(ae.parameters(), ac.lr, ac.steps, f"autoencoder {data.name}", progress=progress)
    ae.train()
    for _ in range(ac.steps):
        idx = torch.randint(0, len(x), (ac.batch_size,), device=device, generator=gen)
        loss = ae.loss(x[idx], ac.kl_weight, gen).mean()
        loop.step(loss)
    loop.close()
    if not math.isfinite(loss.item()):
        raise RuntimeError(f"autoencoder training diverged (loss {loss.item()}): lower autoencoder.lr")
    ae.eval().requires_grad_(False)
    space = LatentSpace(ae, 1.0, "", False)
    scale = 1.0 / space.encode(data.images[train_idx]).float().std().item()
    return ae, scale


def latent_space(
    data: ImageData,
    ac: AutoencoderConfig,
    cache_dir: str | Path,
    *,
    device: str | torch.device = "cpu",
    progress: bool | None = None,
) -> LatentSpace:
    """The latent space for ``data`` and ``ac``: loaded from ``cache_dir`` if trained before, else trained and saved."""
    path = cache_folder(Path(cache_dir)) / cache_path(data, ac, cache_dir).name
    # Two jobs of one spec (the seeds of a latent arm) start together: one trains, the other waits and loads.
    with FileLock(f"{path}.lock", thread_local=False):
        return _load_or_train(path, data, ac, device, progress)


def _load_or_train(path: Path, data: ImageData, ac: AutoencoderConfig, device, progress) -> LatentSpace:
    key = path.stem.removeprefix(f"{ARCH}-")
    if path.is_file():
        try:
            saved = load_entry(path, device)  # tensors and plain data only
            scale = float(saved["scale"])
            # A NaN or zero s would only show as a diffusion loss error that names no file.
            if not (math.isfinite(scale) and scale > 0):
                raise ValueError(f"scale factor s = {scale} is not a positive finite number")
            check_tensors(saved["state_dict"])
            ae = Autoencoder(data.channels, ac.channels, ac.latent_channels, ac.downsample).to(device)
            ae.load_state_dict(saved["state_dict"])
            return LatentSpace(ae.eval().requires_grad_(False), scale, key, from_cache=True)
        except Exception as e:  # a cache is only a cache: an unreadable one is rebuilt
            unreadable(f"autoencoder {data.name}", path, e)
    ae, scale = train_autoencoder(data, ac, device=device, progress=progress)
    state = {k: v.cpu() for k, v in ae.state_dict().items()}
    save_atomic({"arch": ARCH, "config": ac.model_dump(mode="json"), "state_dict": state, "scale": scale}, path)
    return LatentSpace(ae, scale, key, from_cache=False)
