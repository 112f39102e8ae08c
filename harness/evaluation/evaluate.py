"""Evaluate a model: sample with each configured setting from fixed noise, then score the samples.

The noise x_T and the labels are drawn once from ``eval.seed``, so every evaluation during training
starts from the same points and grids over training are comparable frame by frame.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..config import Config, SamplerSetting
from ..config.schema import eval_key
from ..device import autocast, resolve_precision
from ..diffusion.processes import PROCESSES
from ..diffusion.schedules import make_schedule
from ..progress import Progress
from ..result import EvalResult
from ..tracker import NullTracker, Tracker
from ..training.autoencoder import latent_space
from ..training.data import ImageData
from .features import domain_classifier
from .latent import reconstruction_floor
from .metrics import class_accuracy, fidelity_metrics, inception_fid, recognizability, recognized_class_accuracy
from .noisy_classifier import Recipe, noisy_classifier


def default_cache_dir() -> Path:
    """Domain classifiers and reference statistics, keyed by content: safe to share between stores."""
    return Path(os.environ.get("HARNESS_CACHE_DIR") or Path(__file__).resolve().parents[2] / "mlruns" / "cache")


def grid_key(label: str) -> str:
    """The image key a setting's sample grids are logged under in the training run (``samples/<label>``)."""
    return f"samples/{label}"


def image_grid(images: Tensor, n: int):
    """The first ``n`` images in [-1, 1] as one uint8 (H, W, 3) array, sqrt(n) per row."""
    from torchvision.utils import make_grid

    grid = make_grid(images[:n].float().add(1).div(2).clamp(0, 1), nrow=max(1, round(math.sqrt(n))), padding=2)
    return grid.mul(255).round().to(torch.uint8).permute(1, 2, 0).expand(-1, -1, 3).cpu().numpy()


class Evaluator:
    def __init__(
        self,
        config: Config,
        data: ImageData,
        *,
        device: torch.device | str = "cpu",
        cache_dir: str | Path | None = None,
        out_dir: str | Path | None = None,
        progress: bool | None = None,
    ):
        self.config, self.data, self.device = config, data, torch.device(device)
        self.progress = progress  # as in ``harness.progress.Progress``: sampling a setting can take minutes
        self.cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
        self.out_dir = Path(out_dir) if out_dir else None
        classifiers = self.cache_dir / "classifiers"
        self.classifier = domain_classifier(data, classifiers, device=self.device, progress=progress)
        self.recognizer = domain_classifier(data, classifiers, device=self.device, reject=True, progress=progress)
        ec, dc = config.eval, config.diffusion
        # data.space latent: the frozen autoencoder (trained once, cached); samples are decoded before every
        # metric and grid, and its reconstructions' scores are logged once, as the floor (evaluation/latent.py).
        self.space, self.floor = None, None
        c, side = data.channels, data.image_size
        if config.data.space == "latent":
            self.space = latent_space(
                data, config.autoencoder, self.cache_dir / "autoencoders", device=self.device, progress=progress
            )
            c, side = config.autoencoder.latent_shape(side)
        g = torch.Generator().manual_seed(ec.seed)
        self.x_T = torch.randn((ec.num_samples, c, side, side), generator=g)
        self.labels = torch.arange(ec.num_samples) % data.num_classes  # balanced classes
        self.schedule = make_schedule(dc.schedule, dc.timesteps, zero_terminal_snr=dc.zero_terminal_snr)
        # Sampling runs the network in the training precision; the sampler's own updates stay fp32.
        self.amp_dtype = resolve_precision(config.train.precision)
        self._noisy_classifier = None  # trained (or loaded) when a setting first asks for classifier guidance

    @property
    def classifier_accuracy(self) -> float:
        return self.classifier.accuracy

    def generate(self, model, setting: SamplerSetting) -> Generated:
        """Samples from the fixed noise with ``setting``, what they cost per sample, and wall seconds."""
        ec = self.config.eval
        rows = {"network": 0, "classifier": 0}  # batch rows through each network, summed over batches
        n_batches = math.ceil(ec.num_samples / ec.batch_size)
        # Counted in network calls per batch (a guided call on a doubled batch counts 2): the unit of a
        # sampler's cost, and fine-grained within one long batch.
        cost = sampling_cost(self.config, setting)
        bar = Progress(
            n_batches * cost.nfe,
            f"evaluate {self.config.train_hash()} {setting.label}",
            unit="call",
            every=0.25,
            enabled=self.progress,
        )
        batch = 0  # the rows of the batch being sampled

        def counted(x, t, y):
            rows["network"] += x.shape[0]
            bar.update(x.shape[0] // batch)
            with autocast(self.device, self.amp_dtype):
                return model(x, t, y).float()

        def classifier(x, t):  # one forward and one backward pass (guidance.grad_log_p)
            rows["classifier"] += x.shape[0]
            return self.noise_aware_classifier().net(x, t)

        if setting.classifier_scale > 0:  # trained or loaded outside sample_seconds
            self.noise_aware_classifier()
        out = []
        start = time.perf_counter()
        for i, lo in enumerate(range(0, ec.num_samples, ec.batch_size)):
            hi = min(lo + ec.batch_size, ec.num_samples)
            batch = hi - lo
            x = self._sample(counted, classifier, setting, lo, hi, torch.Generator().manual_seed(ec.seed + 1 + i))
            x = x if self.space is None else self.space.decode(x)  # (B, c, h, w) latents -> (B, C, H, W) images
            out.append(x.clamp(-1, 1).cpu())
        bar.close()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        seconds = time.perf_counter() - start
        per_sample = Cost(rows["network"] // ec.num_samples, rows["classifier"] // ec.num_samples)
        return Generated(torch.cat(out), per_sample, seconds)

    def noise_aware_classifier(self):
        """p(y | x_t, t) for classifier guidance, on this data and schedule (evaluation/noisy_classifier.py)."""
        if self._noisy_classifier is None:
            recipe = Recipe(steps=self.config.eval.classifier_steps)
            self._noisy_classifier = noisy_classifier(
                self.data,
                self.schedule,
                self.cache_dir / "classifiers",
                recipe,
                device=self.device,
                progress=self.progress,
            )
        return self._noisy_classifier

    def _sample(self, model, classifier, setting: SamplerSetting, lo: int, hi: int, generator) -> Tensor:
        """Samples lo..hi of the fixed noise x_T (and labels) with ``setting``."""
        ec, conditional = self.config.eval, self.config.model.conditional
        steered = setting.classifier_scale > 0  # classifier guidance needs target labels, conditional or not
        guide = {"classifier": classifier} if steered else {}
        return draw(
            self.config,
            model,
            self.schedule,
            setting,
            x_T=self.x_T[lo:hi],
            labels=self.labels[lo:hi] if conditional or steered else None,
            null_label=self.data.num_classes if conditional else None,
            clip_x0=ec.clip_x0 and self.space is None,  # latents have unit std, not the range [-1, 1]
            generator=generator,
            device=self.device,
            **guide,
        )

    @torch.no_grad()
    def evaluate_setting(self, model, setting: SamplerSetting, *, step: int, final: bool) -> tuple[EvalResult, Any]:
        ec = self.config.eval
        generated = self.generate(model, setting)
        images = generated.images
        metrics = fidelity_metrics(
            images,
            self.data.images,
            self.classifier,
            cache_dir=self.cache_dir / "fidelity",
            reference_key=f"{self.data.name}-{self.data.fingerprint}",
            device=self.device,
            progress=self.progress,
        )
        probs = self.classifier.probs(images)  # (N, K)
        recognized = self.recognizer.probs(images)  # (N, K + 1), the last column the reject class
        threshold = ec.recognizability_threshold
        metrics: dict[str, float] = {
            **metrics,
            "recognizability": recognizability(recognized, threshold),
            "nfe": generated.cost.nfe,
            "classifier_passes": generated.cost.classifier_passes,
            "sample_seconds": generated.seconds,
        }
        if self.config.model.conditional or setting.classifier_scale > 0:
            metrics["class_accuracy"] = class_accuracy(probs, self.labels)
            metrics["recognized_class_accuracy"] = recognized_class_accuracy(recognized, self.labels, threshold)
        unavailable = {}
        if final:
            value, reason = inception_fid(images, self.data.images, weights_path=ec.inception_weights)
            if value is not None:
                metrics["fid_inception"] = value
            else:
                unavailable["fid_inception"] = reason
        result = EvalResult(step=step, setting=setting, metrics=metrics, unavailable=unavailable)
        return result, image_grid(images, ec.grid_size)

    def run(self, model, *, step: int, tracker: Tracker | None = None, final: bool | None = None) -> list[EvalResult]:
        """Evaluate ``model`` with every configured sampler setting; log metrics and grids at ``step``."""
        tracker = tracker or NullTracker()
        final = step == self.config.train.steps if final is None else final
        was_training = getattr(model, "training", False)
        if hasattr(model, "eval"):
            model.eval()
        if self.space is not None and self.floor is None:  # once per process: a constant of the run
            self.floor = reconstruction_floor(
                self.space,
                self.data,
                self.classifier,
                self.recognizer,
                cache_dir=self.cache_dir / "fidelity",
                threshold=self.config.eval.recognizability_threshold,
                num_samples=self.config.eval.num_samples,
                device=self.device,
            )
            tracker.log_metrics(self.floor, step=step)
        results = []
        for setting in self.config.eval.samplers:
            result, grid = self.evaluate_setting(model, setting, step=step, final=final)
            tracker.log_metrics({eval_key(setting.label, k): v for k, v in result.metrics.items()}, step=step)
            tracker.log_image(grid, key=grid_key(setting.label), step=step)
            if self.out_dir is not None:
                save_png(grid, self.out_dir / "grids" / setting.label / f"step_{step:07d}.png")
            results.append(result)
        if was_training:
            model.train()
        return results


def save_png(array, path: Path) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


@dataclass(frozen=True)
class Cost:
    """What sampling costs per sample, in batch rows: a classifier-free-guided step runs the network on a
    doubled batch and counts 2; each classifier-guided step is one forward and one backward pass of the
    noise-aware classifier, counted apart (a smaller network, and not the diffusion model's evaluations)."""

    nfe: int  # network evaluations of the diffusion model
    classifier_passes: int  # forward + backward passes of the classifier of classifier guidance (0 without)


@dataclass
class Generated:
    images: Tensor  # (N, C, H, W) in [-1, 1]
    cost: Cost
    seconds: float  # wall seconds of sampling (and decoding latents)


def sampling_cost(config: Config, setting: SamplerSetting) -> Cost:
    """The ``Cost`` per sample of ``setting``, counted by running its sampler on stand-in networks.

    The samplers themselves decide (Heun's Euler steps above sigma_max included); nothing here lists
    which sampler takes how many. ``Evaluator.generate`` counts the same rows on the real networks.
    """
    dc = config.diffusion
    schedule = make_schedule(dc.schedule, dc.timesteps, zero_terminal_snr=dc.zero_terminal_snr)
    rows = {"network": 0, "classifier": 0}

    def stand_in(x, t, y):
        rows["network"] += x.shape[0]
        return torch.zeros_like(x)

    def classifier(x, t):  # logits of two classes that depend on x, so that a gradient exists
        rows["classifier"] += x.shape[0]
        return x.flatten(1)[:, :2]

    guided, steered = setting.guidance > 0, setting.classifier_scale > 0
    draw(
        config,
        stand_in,
        schedule,
        setting,
        x_T=torch.randn(1, 1, 8, 8, generator=torch.Generator().manual_seed(0)),  # one sample: rows per sample
        labels=torch.zeros(1, dtype=torch.long) if guided or steered else None,
        null_label=1 if guided else None,
        clip_x0=False,
        generator=torch.Generator().manual_seed(0),
        device="cpu",
        **({"classifier": classifier} if steered else {}),
    )
    return Cost(rows["network"], rows["classifier"])


def sampling_nfe(config: Config, setting: SamplerSetting) -> int:
    """Network evaluations per sample with ``setting`` (``Cost.nfe``): what the dry run's budget counts."""
    return sampling_cost(config, setting).nfe


def draw(config: Config, model, schedule, setting: SamplerSetting, *, x_T: Tensor, **kw) -> Tensor:
    """Sample from ``x_T`` with ``setting`` by the config's process (``diffusion.processes.PROCESSES``)."""
    return PROCESSES[config.diffusion.process].sample(model, schedule, config.diffusion, setting, x_T=x_T, **kw)
