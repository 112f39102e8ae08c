import pytest
import torch

from harness import UNet


def _randomized(model: UNet) -> UNet:
    # Residual branches are zero-initialized (improved-diffusion), which hides every dependency at init.
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model.eval()


def test_output_depends_on_t_in_every_resolution_level():
    """The classic silent bug: a timestep embedding that never reaches some blocks."""
    model = _randomized(UNet(channels=16, channel_mult=(1, 2, 2), num_res_blocks=2, attention_resolutions=(7,)))
    captured = {}
    hooks = [
        block.register_forward_pre_hook(lambda mod, args, key=(li, bi): captured.setdefault(key, []).append(args))
        for li, level in enumerate(model.levels())
        for bi, block in enumerate(level.blocks)
    ]
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        model(x, torch.tensor([10, 10]))
        model(x, torch.tensor([900, 900]))
    for h in hooks:
        h.remove()
    resolutions = {level.resolution for level in model.levels()}
    assert resolutions == {28, 14, 7}
    assert len(captured) == sum(len(level.blocks) for level in model.levels()) == 2 + 2 + 2 + 2 + 3 * 3
    for (li, bi), [(h1, emb1), (_, emb2)] in captured.items():
        block = model.levels()[li].blocks[bi]
        assert not torch.allclose(emb1, emb2), f"level {li} block {bi} receives no timestep embedding"
        with torch.no_grad():
            assert not torch.allclose(block(h1, emb1), block(h1, emb2)), f"level {li} block {bi} ignores t"
    with torch.no_grad():
        assert not torch.allclose(model(x, torch.tensor([10, 10])), model(x, torch.tensor([900, 900])))


def test_output_depends_on_y_when_conditional():
    model = _randomized(UNet(channels=16, num_classes=10))
    x, t = torch.randn(2, 1, 28, 28), torch.tensor([500, 500])
    with torch.no_grad():
        a, b = model(x, t, torch.tensor([3, 3])), model(x, t, torch.tensor([7, 7]))
        null = model(x, t, torch.full((2,), model.null_label))
        torch.testing.assert_close(model(x, t, None), null)  # no label means the null label
    assert not torch.allclose(a, b) and not torch.allclose(a, null)
    assert model.class_emb.num_embeddings == 11  # ten classes plus the null class


@pytest.mark.parametrize("channels,size,mult", [(1, 28, (1, 2, 2)), (3, 32, (1, 2, 2, 2)), (1, 28, (1, 2, 2, 2))])
def test_shapes_and_parameter_count(channels, size, mult):
    model = UNet(in_channels=channels, image_size=size, channels=16, channel_mult=mult)
    x = torch.randn(3, channels, size, size)
    assert model(x, torch.tensor([0, 1, 2])).shape == x.shape
    assert model.num_parameters == sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("channels", [8, 16, 24, 32, 128])
def test_group_norm_never_degenerates_to_instance_norm(channels):
    """A GroupNorm with one channel per group erases each image's brightness (grey-background samples)."""
    norms = [m for m in UNet(channels=channels).modules() if isinstance(m, torch.nn.GroupNorm)]
    assert norms and all(m.num_channels // m.num_groups >= 4 for m in norms)
    if channels == 128:
        assert {m.num_groups for m in norms} == {32}  # DDPM's GroupNorm(32) at its own widths
