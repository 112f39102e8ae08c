"""`harness bench --peer`'s peer: diffusers' UNet2DModel sized like the bench's UNet, its FLOP count, and the
one-line error without diffusers."""

import sys

import numpy as np
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from harness.tools.measure import _config
from harness.tools.peer import PeerUnavailable, peer_config, peer_model, peer_step_flops
from harness.training.data import from_uint8
from harness.training.train import build_model

B = 4


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    return from_uint8("tiny", rng.integers(0, 256, (B, 28, 28)), np.arange(B) % 10, 10)


@pytest.fixture(scope="module")
def ours(data):
    return build_model(_config(B, 1, "cpu"), data.channels, data.image_size, data.num_classes).num_parameters


def test_peer_matches_the_bench_unet_in_size_and_maps_images_to_images(data, ours):
    pytest.importorskip("diffusers")
    model = peer_model(data.channels, data.image_size, data.num_classes, ours)
    n = sum(p.numel() for p in model.parameters())
    assert abs(n - ours) <= 0.15 * ours, (n, ours, peer_config(1, 28, 10, ours))
    t = torch.tensor([0, 10, 500, 999])
    y = torch.tensor([0, 3, 9, data.num_classes])  # the last is the null label
    with torch.no_grad():
        out = model(data.images, t, class_labels=y).sample
    assert out.shape == data.images.shape == (B, 1, 28, 28)
    assert torch.isfinite(out).all()


def _forward_flops_by_shapes(model: torch.nn.Module, x, t, y) -> float:
    """2 * multiply-adds of every Conv2d and Linear, from the shapes their forward hooks see."""
    total = 0.0

    def conv(m, inputs, out):
        nonlocal total
        kh, kw = m.kernel_size
        total += 2 * out.numel() * (m.in_channels // m.groups) * kh * kw

    def linear(m, inputs, out):
        nonlocal total
        total += 2 * out.numel() * m.in_features

    hooks = [
        m.register_forward_hook(conv if isinstance(m, torch.nn.Conv2d) else linear)
        for m in model.modules()
        if isinstance(m, torch.nn.Conv2d | torch.nn.Linear)
    ]
    with torch.no_grad():
        model(x, t, class_labels=y)
    for h in hooks:
        h.remove()
    return total


def test_peer_step_flops_are_about_three_forwards(data, ours):
    pytest.importorskip("diffusers")
    model = peer_model(data.channels, data.image_size, data.num_classes, ours)
    forward = _forward_flops_by_shapes(model, data.images, torch.tensor([1, 2, 3, 4]), data.labels)
    step = peer_step_flops(data, B, ours)
    # The backward of a conv or linear layer is two products the size of its forward (input and weight
    # gradients), attention adds a little, and the first conv needs no input gradient.
    assert 2 * forward < step < 4 * forward, step / forward
    # Same layout and size, so about the same work per image as our UNet (~0.21 GFLOP per forward at 28x28).
    unet = build_model(_config(B, 1, "cpu"), data.channels, data.image_size, data.num_classes)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        unet(data.images, torch.tensor([1, 2, 3, 4]), data.labels)
    assert forward == pytest.approx(counter.get_total_flops(), rel=0.1)


def test_peer_without_diffusers_raises_one_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "diffusers", None)  # `import diffusers` raises ImportError
    with pytest.raises(PeerUnavailable) as err:
        peer_model(1, 28, 10, 600_000)
    assert str(err.value) == "harness bench --peer needs diffusers: pip install -e '.[peer]'"


def test_peer_needs_an_image_size_divisible_by_four():
    with pytest.raises(ValueError, match="divisible by 4; got 26"):
        peer_config(1, 26, 10, 600_000)
