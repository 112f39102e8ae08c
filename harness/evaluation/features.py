"""The domain feature extractor for FID: a small CNN classifier trained on the data set itself.

FID (Heusel et al. 2017) is the Frechet distance between Gaussians fitted to features of real and
generated images. InceptionV3's pool3 features describe ImageNet photographs, not 28x28 digits,
and its weights cannot be fetched offline, so the harness measures FID, KID and precision/recall
in the penultimate layer (D = 128) of a classifier trained on the domain. The classifier is
trained once per data set, with a deterministic held-out split to report its accuracy, and cached
on disk under the data's fingerprint and the architecture version.

The recognizer, which decides recognizability, is the same network with one more class, a reject
class trained on synthetic non-digits (``non_digits``): a plain softmax classifier is confident on
noise, and its feature space puts blobs and shuffled ink next to digits, so neither its top
probability nor a k-NN manifold test in its features can tell a digit from garbage.
"""

from __future__ import annotations

import copy
import hashlib
import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..once import check_tensors, load_entry, made_once, step_seconds
from ..training.checkpoint import save_atomic
from ..training.data import ImageData, split_indices
from ..training.one_cycle import OneCycle

# Cached weights are keyed by these strings: change one whenever its network or training recipe
# changes, so that old caches are not mistaken for the new classifier.
ARCH = "domaincnn-v1"
RECOGNIZER_ARCH = "recognizer-v2"  # v2: speckle among the non-digits
WIDTHS = (16, 32, 64)  # channels of the three conv blocks; each block halves H and W
FEATURE_DIM = 128  # D, the dimension of the features FID is computed in
HOLDOUT_FRACTION = 0.1
BATCH_SIZE = 128
LR = 3e-3
TARGET_STEPS = 300  # optimizer steps the default epoch count aims at (9 epochs on mnist-5k)
MIN_EPOCHS = 3
MAX_SHIFT = 2  # pixels of random translation in training; digits are not always centred
MAX_ROTATION = 12.0  # degrees of random rotation for the recognizer: a reader still reads a tilted digit
NON_DIGITS_PER_BATCH = 32  # synthetic non-digits added to each batch of BATCH_SIZE digits (recognizer only)
BLOB_CELLS = (3, 4, 5, 6, 8, 10)  # side of the random grid that smooth blobs are upsampled from


class DomainCNN(nn.Module):
    """Three conv-BN-ReLU-maxpool blocks, a D-dimensional feature layer, and a linear head."""

    def __init__(self, in_channels: int, height: int, width: int, num_classes: int):
        super().__init__()
        if min(height, width) < 8:
            raise ValueError(f"DomainCNN needs images of at least 8x8 pixels, got {height}x{width}")
        blocks, c = [], in_channels
        for w in WIDTHS:
            blocks += [nn.Conv2d(c, w, 3, padding=1, bias=False), nn.BatchNorm2d(w), nn.ReLU(), nn.MaxPool2d(2)]
            c = w
        # Flattening the last (H/8, W/8) map keeps where strokes are, which global pooling would discard.
        self.trunk = nn.Sequential(
            *blocks, nn.Flatten(), nn.Linear(c * (height // 8) * (width // 8), FEATURE_DIM), nn.ReLU()
        )
        self.head = nn.Linear(FEATURE_DIM, num_classes)
        self.shape = {"in_channels": in_channels, "height": height, "width": width, "num_classes": num_classes}

    def features(self, x: Tensor) -> Tensor:  # (N, C, H, W) in [-1, 1] -> (N, D)
        return self.trunk(x)

    def forward(self, x: Tensor) -> Tensor:  # -> logits (N, num_classes)
        return self.head(self.trunk(x))


def _batched(fn, x: Tensor, device: torch.device, batch_size: int = 1024) -> Tensor:
    with torch.no_grad():
        return torch.cat([fn(chunk.to(device)).to(x.device) for chunk in x.split(batch_size)])


@dataclass
class DomainClassifier:
    """A trained DomainCNN, its held-out accuracy, and a fingerprint of its weights."""

    net: DomainCNN
    accuracy: float  # top-1 on the held-out split of the data it was trained on
    fingerprint: str  # short sha256 of the weights: names the feature space in metric caches
    from_cache: bool  # True when the weights were loaded rather than trained in this call

    @property
    def device(self) -> torch.device:
        return next(self.net.parameters()).device

    def features(self, x: Tensor) -> Tensor:
        """Penultimate-layer features phi(x): (N, C, H, W) in [-1, 1] -> (N, D), on x's device."""
        return _batched(self.net.features, x, self.device)

    def probs(self, x: Tensor) -> Tensor:
        """p(y | x): (N, C, H, W) in [-1, 1] -> (N, num_classes) softmax, on x's device."""
        return _batched(self.net, x, self.device).softmax(dim=1)


def _random_shift(x: Tensor, max_shift: int, generator: torch.Generator) -> Tensor:
    """Translate each image by a random whole number of pixels in [-max_shift, max_shift]; fill with -1."""
    n, _, h, w = x.shape
    shift = torch.randint(-max_shift, max_shift + 1, (n, 2), generator=generator).to(x)  # (N, 2) as (dx, dy)
    theta = torch.zeros(n, 2, 3, dtype=x.dtype, device=x.device)
    theta[:, 0, 0] = theta[:, 1, 1] = 1.0
    theta[:, 0, 2] = -2.0 * shift[:, 0] / w  # one pixel is 2 / W in grid_sample's [-1, 1] coordinates
    theta[:, 1, 2] = -2.0 * shift[:, 1] / h
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    # Sampling x + 1 with zero padding fills the uncovered border with -1 (black), the background.
    return F.grid_sample(x + 1.0, grid, mode="nearest", align_corners=False) - 1.0


def _random_rotation(x: Tensor, max_degrees: float, generator: torch.Generator) -> Tensor:
    """Rotate each image about its centre by a uniform angle in [-max_degrees, max_degrees]; fill with -1."""
    n = x.shape[0]
    a = (torch.rand(n, generator=generator) * 2 - 1).mul(math.radians(max_degrees)).to(x)  # (N,)
    theta = torch.zeros(n, 2, 3, dtype=x.dtype, device=x.device)
    theta[:, 0, 0] = theta[:, 1, 1] = a.cos()
    theta[:, 0, 1], theta[:, 1, 0] = -a.sin(), a.sin()
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x + 1.0, grid, mode="bilinear", align_corners=False) - 1.0


def non_digits(digits: Tensor, generator: torch.Generator) -> Tensor:
    """As many images as ``digits`` (N, C, H, W) that no reader would call a digit, in [-1, 1].

    The recognizer's reject class is trained on these: uniform noise, Gaussian noise of random
    scale, smooth random blobs (a coarse Gaussian grid upsampled, soft or thresholded), the
    given digits with their pixels shuffled, which keeps each digit's ink histogram but no stroke,
    and speckle: sparse dots of ink gathered where a smooth random envelope is high. Speckle is
    what an undertrained denoiser draws (a 0.27M DiT after 800 steps: scattered dots on black that
    the recognizer without it called an "8" in 38% of samples). Constant images are left out on
    purpose, so the calibration shows the reject class generalizing to a kind of non-digit it
    never saw (and to an untrained model's samples).
    """
    n, c, h, w = digits.shape
    kind = torch.randint(0, 5, (n,), generator=generator)
    uniform = torch.rand(n, c, h, w, generator=generator) * 2 - 1
    gauss = torch.randn(n, c, h, w, generator=generator) * (0.3 + 1.2 * torch.rand(n, 1, 1, 1, generator=generator))
    cells = BLOB_CELLS[int(torch.randint(len(BLOB_CELLS), (), generator=generator))]
    coarse = torch.randn(n, c, cells, cells, generator=generator)
    smooth = F.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=False)
    level = torch.rand(n, 1, 1, 1, generator=generator) - 0.5  # binarize at a random level, or keep soft
    hard = torch.rand(n, 1, 1, 1, generator=generator) < 0.5
    blobs = torch.where(hard, torch.where(smooth > level, 1.0, -1.0), smooth * 2)
    order = torch.rand(n, h * w, generator=generator).argsort(dim=1)  # one permutation per image
    shuffled = digits.cpu().flatten(2).gather(2, order[:, None].expand(-1, c, -1)).view(n, c, h, w)
    speckle = _speckle(n, c, h, w, smooth, generator)
    out = torch.stack([uniform, gauss, blobs, shuffled, speckle])[kind, torch.arange(n)]  # (N, C, H, W)
    return out.clamp(-1, 1).to(digits.device)


def _speckle(n: int, c: int, h: int, w: int, smooth: Tensor, generator: torch.Generator) -> Tensor:
    """Dots of ink, 1 or 2 pixels wide, gathered where an envelope is high (a smooth random blob, or a
    digit-sized Gaussian near the centre), over a faint haze: an undertrained denoiser's samples."""
    ys, xs = torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32)
    centre = (torch.tensor([h, w]) - 1) / 2 + (torch.rand(n, 2, generator=generator) * 6 - 3)
    width = 3.0 + 4.0 * torch.rand(n, 1, 1, generator=generator)  # pixels
    d2 = (ys[None, :, None] - centre[:, 0, None, None]) ** 2 + (xs[None, None, :] - centre[:, 1, None, None]) ** 2
    gaussian = torch.exp(-d2 / (2 * width**2))[:, None]  # (N, 1, H, W)
    use_blob = torch.rand(n, 1, 1, 1, generator=generator) < 0.5
    envelope = torch.where(use_blob, torch.sigmoid(3 * smooth), gaussian)
    density = 0.1 + 0.4 * torch.rand(n, 1, 1, 1, generator=generator)  # of dots where the envelope is 1
    fine = torch.rand(n, c, h, w, generator=generator)
    coarse = F.interpolate(torch.rand(n, c, (h + 1) // 2, (w + 1) // 2, generator=generator), scale_factor=2)
    wide = torch.rand(n, 1, 1, 1, generator=generator) < 0.5
    dots = torch.where(wide, coarse[..., :h, :w], fine) < density * envelope
    ink = 0.5 + 0.5 * torch.rand(n, c, h, w, generator=generator)  # grey to white
    haze = torch.randn(n, c, h, w, generator=generator).abs() * 0.3 * torch.rand(n, 1, 1, 1, generator=generator)
    return torch.where(dots, 2 * ink - 1, haze - 1)


def default_epochs(n_train: int) -> int:
    """Enough epochs for about TARGET_STEPS optimizer steps, and never fewer than MIN_EPOCHS."""
    return max(MIN_EPOCHS, math.ceil(TARGET_STEPS / math.ceil(n_train / BATCH_SIZE)))


def train_classifier(
    data: ImageData,
    *,
    seed: int = 0,
    epochs: int | None = None,
    device: str | torch.device = "cpu",
    reject: bool = False,
    progress: bool | None = None,
) -> tuple[DomainCNN, float]:
    """Train a DomainCNN on all but a held-out 10% of ``data``; return it (eval mode) and its held-out accuracy.

    AdamW with a one-cycle learning rate (Smith & Topin 2019) and random translations. Every
    random choice comes from ``seed``: initialisation runs under a forked, seeded global RNG and
    the batch order and shifts use their own generator, so CPU runs repeat bit for bit.
    With ``reject`` the network gets one more class, K = data.num_classes, the reject class:
    every batch adds NON_DIGITS_PER_BATCH ``non_digits`` labelled K, and digits are also rotated.
    ``progress`` as in ``harness.progress.Progress``: this takes a minute or two on a CPU.
    """
    train_idx, held_idx = split_indices(len(data), HOLDOUT_FRACTION, seed)
    x, y = data.images[train_idx].to(device), data.labels[train_idx].to(device)  # (N, C, H, W), (N,)
    epochs = default_epochs(len(x)) if epochs is None else epochs
    num_outputs = data.num_classes + int(reject)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = DomainCNN(data.channels, data.images.shape[2], data.images.shape[3], num_outputs).to(device)
    generator = torch.Generator().manual_seed(seed)
    steps = epochs * math.ceil(len(x) / BATCH_SIZE)
    what = "recognizer" if reject else "domain classifier"
    loop = OneCycle(net.parameters(), LR, steps, f"{what} {data.name}", weight_decay=1e-4, progress=progress)
    net.train()
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=generator).to(device)
        for batch in order.split(BATCH_SIZE):
            loop.step(_loss(net, x[batch], y[batch], reject, generator))
    loop.close()
    net.eval().requires_grad_(False)
    logits = _batched(net, data.images[held_idx], torch.device(device))
    accuracy = (logits.argmax(dim=1) == data.labels[held_idx]).float().mean().item()
    return net, accuracy


def _loss(net: DomainCNN, x: Tensor, y: Tensor, reject: bool, generator: torch.Generator) -> Tensor:
    """Cross-entropy of one augmented batch; with ``reject``, rotated digits and NON_DIGITS_PER_BATCH non-digits."""
    x = _random_shift(x, MAX_SHIFT, generator)
    if reject:
        x = _random_rotation(x, MAX_ROTATION, generator)
        junk = non_digits(x[:NON_DIGITS_PER_BATCH], generator)
        x = torch.cat([x, junk])
        y = torch.cat([y, torch.full((len(junk),), net.head.out_features - 1, device=y.device)])
    return F.cross_entropy(net(x), y)


def weights_fingerprint(net: nn.Module) -> str:
    """Short sha256 of a module's state (names, shapes, dtypes and bytes)."""
    h = hashlib.sha256()
    for name, t in sorted(net.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()[:16]


def cache_path(
    data: ImageData, cache_dir: str | Path, *, seed: int = 0, epochs: int | None = None, reject: bool = False
) -> Path:
    """Where ``domain_classifier`` keeps the weights for this data, seed, epoch count and kind."""
    n_train = len(data) - len(split_indices(len(data), HOLDOUT_FRACTION, seed)[1])
    epochs = default_epochs(n_train) if epochs is None else epochs
    return Path(cache_dir).expanduser() / f"{_arch(reject)}-{data.fingerprint}-seed{seed}-epochs{epochs}.pt"


def _arch(reject: bool) -> str:
    return RECOGNIZER_ARCH if reject else ARCH


def domain_classifier(
    data: ImageData,
    cache_dir: str | Path,
    *,
    device: str | torch.device = "cpu",
    seed: int = 0,
    epochs: int | None = None,
    reject: bool = False,
    progress: bool | None = None,
) -> DomainClassifier:
    """The domain classifier for ``data``: loaded from ``cache_dir`` if trained before, else trained and saved.

    ``reject=True`` gives the recognizer instead: the same network with a reject class (see
    ``train_classifier``), which decides recognizability; the plain classifier defines the FID space.
    Workers that start together train it once (``harness.once.made_once``).
    """
    path = cache_path(data, cache_dir, seed=seed, epochs=epochs, reject=reject)

    def make() -> DomainClassifier:
        net, accuracy = train_classifier(
            data, seed=seed, epochs=epochs, device=device, reject=reject, progress=progress
        )
        state = {k: v.cpu() for k, v in net.state_dict().items()}
        save_atomic({"arch": _arch(reject), "shape": net.shape, "state_dict": state, "accuracy": accuracy}, path)
        return DomainClassifier(net=net, accuracy=accuracy, fingerprint=weights_fingerprint(net), from_cache=False)

    why = "it decides recognizability" if reject else "its features are the space of FID, KID and precision/recall"
    shape = {"in_channels": data.channels, "height": data.images.shape[2], "width": data.images.shape[3]}
    shape["num_classes"] = data.num_classes + int(reject)
    return made_once(
        path,
        lambda p: read_classifier(p, device, shape=shape),
        make,
        what=f"{'recognizer' if reject else 'domain classifier'} {data.name}",
        why=f"{why}; once per data set",
        estimate=lambda: _training_seconds(data, seed, epochs, reject, torch.device(device)),
        progress=progress,
    )


def _training_seconds(data: ImageData, seed: int, epochs: int | None, reject: bool, device: torch.device) -> float:
    """``train_classifier``'s seconds, from a few timed steps of a throwaway network on one batch."""
    n_train = len(data) - len(split_indices(len(data), HOLDOUT_FRACTION, seed)[1])
    epochs = default_epochs(n_train) if epochs is None else epochs
    with torch.random.fork_rng(devices=[]):  # the caller's random stream is not touched
        net = DomainCNN(data.channels, data.image_size, data.image_size, data.num_classes + int(reject)).to(device)
    x, y = data.images[:BATCH_SIZE].to(device), data.labels[:BATCH_SIZE].to(device)
    generator = torch.Generator().manual_seed(seed)  # its own: the training's stream is not touched
    return step_seconds(net, lambda n: _loss(n, x, y, reject, generator), epochs * math.ceil(n_train / BATCH_SIZE))


def read_classifier(
    path: str | Path, device: str | torch.device = "cpu", *, shape: dict[str, int] | None = None
) -> DomainClassifier:
    """A classifier file as ``domain_classifier`` writes it (and the tracking store holds it).

    Only tensors and plain data are unpickled (``weights_only=True``), so a file downloaded from a shared
    tracking server cannot run code here. Raises on any file that is not such a classifier: another
    ``shape`` than the one given (a classifier of other images or classes), non-finite weights or accuracy.
    """
    saved = load_entry(path, device)
    if shape is not None and saved["shape"] != shape:
        raise ValueError(f"a classifier of shape {saved['shape']}, expected {shape}")
    check_tensors(saved["state_dict"])
    accuracy = float(saved["accuracy"])
    if not 0.0 <= accuracy <= 1.0:  # NaN fails too
        raise ValueError(f"accuracy {accuracy} is not in [0, 1]")
    net = DomainCNN(**saved["shape"]).to(device)
    net.load_state_dict(saved["state_dict"])
    net.eval().requires_grad_(False)
    return DomainClassifier(net=net, accuracy=accuracy, fingerprint=weights_fingerprint(net), from_cache=True)


def fidelity_extractor_prefix(clf: DomainClassifier) -> str:
    """The extractor's name for ``clf``, which torch-fidelity also puts in its cache files' names."""
    return f"harness-domain-{clf.fingerprint}"


def fidelity_extractor_name(clf: DomainClassifier) -> str:
    """Register ``clf`` with torch-fidelity as a feature extractor (once per process) and return its name.

    torch-fidelity builds extractors itself, from a class looked up by name in its process-wide
    registry, so the classifier travels as a class attribute of a subclass made for it. The name
    carries the weights' fingerprint, which also makes torch-fidelity's cache files (named after
    the extractor) specific to this feature space. Inputs arrive as uint8 (N, C, H, W), torch-
    fidelity's convention; features are "features" (N, D) for FID/KID/PRC and "logits" for ISC.
    """
    from torch_fidelity import FeatureExtractorBase, register_feature_extractor
    from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY

    name = fidelity_extractor_prefix(clf)
    if name in FEATURE_EXTRACTORS_REGISTRY:
        return name

    class DomainFeatures(FeatureExtractorBase):
        template = copy.deepcopy(clf.net).cpu()

        def __init__(self, name: str, features_list: list[str], **kwargs):
            super().__init__(name, features_list)
            # torch-fidelity moves and freezes the extractor it builds; a copy keeps clf.net untouched.
            self.net = copy.deepcopy(self.template)

        @staticmethod
        def get_provided_features_list():
            return ("features", "logits")

        @staticmethod
        def get_default_feature_layer_for_metric(metric):
            return {"isc": "logits"}.get(metric, "features")

        @staticmethod
        def can_be_compiled():
            return False

        @classmethod
        def get_dummy_input_for_compile(cls):
            shape = cls.template.shape
            return torch.zeros(1, shape["in_channels"], shape["height"], shape["width"], dtype=torch.uint8)

        def forward(self, x: Tensor) -> tuple[Tensor, ...]:  # x uint8 (N, C, H, W)
            if x.dtype != torch.uint8 or x.dim() != 4:
                raise ValueError(f"expected uint8 images (N, C, H, W), got {x.dtype} {tuple(x.shape)}")
            h = self.net.features(x.float() / 127.5 - 1.0)  # (N, D)
            out = {"features": h, "logits": self.net.head(h)}
            return tuple(out[k] for k in self.features_list)

    register_feature_extractor(name, DomainFeatures)
    return name
