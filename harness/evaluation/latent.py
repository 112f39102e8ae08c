"""The floor of a latent arm: the frozen autoencoder's reconstructions of held-out digits, scored as samples are.

A sample of latent diffusion is D(z / s) for a generated latent z; at best z is the latent of a real digit,
and then the sample is that digit's reconstruction. So the FID and recognizability of reconstructions of
digits the autoencoder never trained on bound what the latent arm can reach, whatever its diffusion model.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..config.schema import AUTOENCODER_FLOOR, AUTOENCODER_SCALE, floor_key
from ..training.autoencoder import LatentSpace, held_out
from ..training.data import ImageData
from .features import DomainClassifier
from .metrics import fidelity_metrics, recognizability


@torch.no_grad()
def reconstruction_floor(
    space: LatentSpace,
    data: ImageData,
    classifier: DomainClassifier,
    recognizer: DomainClassifier,
    *,
    cache_dir: str | Path,
    threshold: float,
    num_samples: int,
    device: torch.device | str = "cpu",
) -> dict[str, float]:
    """``autoencoder/recon_fid`` (against the whole data set, as samples' FID is), ``autoencoder/recon_recognizability``
    and the scale factor, for the held-out digits' reconstructions: ``num_samples`` of them (the arms' N, since FID's
    bias depends on N; fewer where the held-out tenth is smaller, e.g. 500 of mnist-5k)."""
    x = data.images[held_out(data)[1][:num_samples]]  # (N, C, H, W)
    x_hat = space.decode(space.encode(x))
    scores = {
        "fid": fidelity_metrics(
            x_hat,
            data.images,
            classifier,
            cache_dir=cache_dir,
            reference_key=f"{data.name}-{data.fingerprint}",
            device=device,
        )["fid"],
        "recognizability": recognizability(recognizer.probs(x_hat), threshold),
    }
    return {**{floor_key(m): scores[m] for m in AUTOENCODER_FLOOR}, AUTOENCODER_SCALE: space.scale}
