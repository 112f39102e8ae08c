"""The noise-aware classifier p(y | x_t, t) of classifier guidance (Dhariwal & Nichol 2021, sec. 4).

A small conv net with a timestep embedding, trained by cross-entropy on x_t = sqrt(abar_t) x_0 +
sqrt(1 - abar_t) eps drawn from the run's own schedule at every t, so its gradient
grad_x log p(y | x_t, t) is meaningful where the sampler asks for it. Trained once per data set,
schedule and recipe, and cached on disk like the domain classifier (``features.domain_classifier``):
the file name holds the data's fingerprint, a hash of the schedule's abar_t values (not its name,
so a rescaled schedule is another classifier) and a hash of the architecture and recipe.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..diffusion.schedules import Schedule
from ..models.unet import timestep_embedding
from ..once import check_tensors, load_entry, made_once, step_seconds
from ..training.checkpoint import save_atomic
from ..training.data import ImageData, split_indices
from ..training.one_cycle import OneCycle

# Change whenever the network changes, so old caches are not mistaken for the new classifier.
ARCH = "noisyclf-v1"
HOLDOUT_FRACTION = 0.1
GROUPS = 8  # GroupNorm groups: batch statistics would mix noise levels


@dataclass(frozen=True)
class Recipe:
    """The classifier's width and training budget; part of its cache key."""

    steps: int  # optimizer steps: eval.classifier_steps
    widths: tuple[int, ...] = (32, 64)  # channels per level: the stem halves H and W, each later level again
    batch_size: int = 128
    lr: float = 2e-3
    seed: int = 0

    def key(self) -> str:
        blob = json.dumps({"arch": ARCH, **asdict(self)}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]


class _Block(nn.Module):
    """GroupNorm-SiLU-conv with the timestep embedding added per channel, plus a residual path."""

    def __init__(self, c_in: int, c_out: int, emb_dim: int):
        super().__init__()
        self.norm = nn.GroupNorm(min(GROUPS, c_in), c_in)
        self.conv = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.emb = nn.Linear(emb_dim, c_out)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:  # (B, C_in, H, W), (B, E) -> (B, C_out, H, W)
        return self.skip(x) + self.conv(F.silu(self.norm(x))) + self.emb(emb)[:, :, None, None]


class NoisyClassifier(nn.Module):
    """logits(x_t, t): (B, C, H, W), t long (B,) -> (B, K)."""

    def __init__(self, in_channels: int, num_classes: int, widths: tuple[int, ...]):
        super().__init__()
        self.emb_dim = widths[0]
        self.time_mlp = nn.Sequential(
            nn.Linear(widths[0], 2 * widths[0]), nn.SiLU(), nn.Linear(2 * widths[0], widths[0])
        )
        self.stem = nn.Conv2d(in_channels, widths[0], 3, stride=2, padding=1)  # a cheap net: start at H/2
        self.blocks = nn.ModuleList()
        self.down = nn.ModuleList()
        c = widths[0]
        for i, w in enumerate(widths):
            self.down.append(nn.Conv2d(c, c, 3, stride=2, padding=1) if i > 0 else nn.Identity())
            self.blocks.append(_Block(c, w, widths[0]))
            c = w
        self.head = nn.Sequential(
            nn.GroupNorm(min(GROUPS, c), c), nn.SiLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, num_classes)
        )
        self.shape = {"in_channels": in_channels, "num_classes": num_classes, "widths": list(widths)}

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        emb = self.time_mlp(timestep_embedding(t, self.emb_dim))  # (B, E)
        h = self.stem(x)
        for down, block in zip(self.down, self.blocks):
            h = block(down(h), emb)
        return self.head(h)


@dataclass
class NoisyClassifierResult:
    """A trained classifier, its held-out accuracy at a few t, and whether it came from the cache."""

    net: NoisyClassifier
    accuracy: dict[int, float]  # t -> top-1 on the held-out split, x_t drawn at that t
    train_seconds: float  # of the training that made these weights (as saved, when loaded)
    from_cache: bool


def _noised(x0: Tensor, t: Tensor, schedule: Schedule, generator: torch.Generator) -> Tensor:
    abar = schedule.abar(t.cpu(), x0).to(x0.device)  # (B, 1, 1, 1)
    eps = torch.randn(x0.shape, generator=generator).to(x0.device)
    return abar.sqrt() * x0 + (1 - abar).sqrt() * eps


def train_noisy_classifier(
    data: ImageData,
    schedule: Schedule,
    recipe: Recipe,
    *,
    device: str | torch.device = "cpu",
    progress: bool | None = None,
) -> NoisyClassifierResult:
    """AdamW with a one-cycle rate on x_t of all but a held-out 10% of ``data``, t uniform on [0, T)."""
    start = time.perf_counter()
    train_idx, held_idx = split_indices(len(data), HOLDOUT_FRACTION, recipe.seed)
    x, y = data.images[train_idx].to(device), data.labels[train_idx].to(device)  # (N, C, H, W), (N,)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(recipe.seed)
        net = NoisyClassifier(data.channels, data.num_classes, recipe.widths).to(device)
    generator = torch.Generator().manual_seed(recipe.seed)
    what = f"noise-aware classifier {data.name} {schedule.name}"
    loop = OneCycle(net.parameters(), recipe.lr, recipe.steps, what, weight_decay=1e-4, progress=progress)
    net.train()
    with torch.enable_grad():  # the evaluator asks for it while sampling, under no_grad
        for _ in range(recipe.steps):
            batch = torch.randint(len(x), (recipe.batch_size,), generator=generator).to(device)
            t = torch.randint(schedule.T, (recipe.batch_size,), generator=generator).to(device)
            loop.step(F.cross_entropy(net(_noised(x[batch], t, schedule, generator), t), y[batch]))
    loop.close()
    net.eval().requires_grad_(False)
    x_held, y_held = data.images[held_idx].to(device), data.labels[held_idx].to(device)
    accuracy = {}
    with torch.no_grad():
        for t_value in (0, schedule.T // 4, schedule.T // 2, 3 * schedule.T // 4):
            t = torch.full((len(x_held),), t_value, dtype=torch.long, device=device)
            logits = net(_noised(x_held, t, schedule, generator), t)
            accuracy[t_value] = (logits.argmax(dim=1) == y_held).float().mean().item()
    return NoisyClassifierResult(net, accuracy, time.perf_counter() - start, from_cache=False)


def schedule_key(schedule: Schedule) -> str:
    """A hash of abar_t itself: T, the schedule and any rescaling all change it."""
    return hashlib.sha256(schedule.alphas_cumprod.double().contiguous().numpy().tobytes()).hexdigest()[:12]


def cache_path(data: ImageData, schedule: Schedule, cache_dir: str | Path, recipe: Recipe) -> Path:
    """Where ``noisy_classifier`` keeps the weights for this data, schedule and recipe."""
    name = f"{ARCH}-{data.fingerprint}-{schedule_key(schedule)}-{recipe.key()}.pt"
    return Path(cache_dir).expanduser() / name


def noisy_classifier(
    data: ImageData,
    schedule: Schedule,
    cache_dir: str | Path,
    recipe: Recipe,
    *,
    device: str | torch.device = "cpu",
    progress: bool | None = None,
) -> NoisyClassifierResult:
    """The noise-aware classifier for ``data`` and ``schedule``: loaded from ``cache_dir``, else trained and saved."""
    path = cache_path(data, schedule, cache_dir, recipe)

    def load(path: Path) -> NoisyClassifierResult:
        saved = load_entry(path, device)  # tensors and plain data only
        net = NoisyClassifier(data.channels, data.num_classes, recipe.widths).to(device)
        if saved["shape"] != net.shape:  # the name says which recipe; the file must agree with it
            raise ValueError(f"a classifier of shape {saved['shape']}, expected {net.shape}")
        check_tensors(saved["state_dict"])
        net.load_state_dict(saved["state_dict"])
        net.eval().requires_grad_(False)
        accuracy = {int(k): float(v) for k, v in saved["accuracy"].items()}
        if not all(0.0 <= a <= 1.0 for a in accuracy.values()):
            raise ValueError(f"accuracies {accuracy} are not in [0, 1]")
        return NoisyClassifierResult(net, accuracy, float(saved["train_seconds"]), from_cache=True)

    def make() -> NoisyClassifierResult:
        result = train_noisy_classifier(data, schedule, recipe, device=device, progress=progress)
        state = {k: v.cpu() for k, v in result.net.state_dict().items()}
        saved = {"arch": ARCH, "shape": result.net.shape, "state_dict": state, "accuracy": result.accuracy}
        save_atomic({**saved, "train_seconds": result.train_seconds, "recipe": asdict(recipe)}, path)
        return result

    def estimate() -> float:
        with torch.random.fork_rng(devices=[]):  # the caller's random stream is not touched
            net = NoisyClassifier(data.channels, data.num_classes, recipe.widths).to(device)
        x, y = data.images[: recipe.batch_size].to(device), data.labels[: recipe.batch_size].to(device)
        t = torch.arange(len(x), device=device) % schedule.T
        return step_seconds(net, lambda n: F.cross_entropy(n(x, t), y), recipe.steps)

    # The seeds of an unconditional arm evaluate together: one trains it, the others wait and load it.
    return made_once(
        path,
        load,
        make,
        what=f"noise-aware classifier {data.name} {schedule.name}",
        why="classifier guidance steers by its gradient; once per data set, schedule and recipe",
        estimate=estimate,
        progress=progress,
    )
