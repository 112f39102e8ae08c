"""The DiT backbone (Peebles & Xie 2023) against its closed forms, the backbone registry, and a DiT run end to end."""

import json
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from analysis_fixtures import S, fixture_data

from analysis.load import _runs_table
from analysis.report import build_document
from harness.cli import main
from harness.config import Config, ConfigError, build_config
from harness.config.schema import GFLOPS_PER_IMAGE, HASH, NUM_PARAMETERS
from harness.config.spec import load_spec, make_plan
from harness.diffusion.losses import diffusion_loss
from harness.diffusion.samplers import sample
from harness.diffusion.schedules import make_schedule
from harness.models.dit import FREQUENCY_DIM, DiT, sincos_2d
from harness.models.registry import BACKBONES, gflops_per_image
from harness.orchestration.budget import speed_key
from harness.tracker import MemoryTracker
from harness.training.train import NoEvaluation, build_model, train

SMALL = {"in_channels": 1, "image_size": 28, "patch_size": 4, "depth": 2, "hidden": 32, "heads": 2}


def dit_parameters(C: int, p: int, h: int, d: int, K: int | None) -> int:
    """The count written from the layers (see harness/models/dit.py)."""
    patch = C * p * p * h + h
    time = FREQUENCY_DIM * h + h + h * h + h
    classes = (K + 1) * h if K else 0
    block = (4 * h * h + 4 * h) + (8 * h * h + 5 * h) + 6 * h * (h + 1)  # attention, MLP, adaLN modulation
    final = 2 * h * (h + 1) + h * p * p * C + p * p * C
    return patch + time + classes + d * block + final


def dit_gflops(C: int, size: int, p: int, h: int, d: int) -> float:
    """FLOPs of one image's forward pass, a multiply-add as 2: every matrix product and the attention."""
    N = (size // p) ** 2
    patch, time = 2 * N * h * C * p * p, 2 * FREQUENCY_DIM * h + 2 * h * h
    block = 2 * 6 * h * h + 2 * N * h * 3 * h + 4 * N * N * h + 2 * N * h * h + 2 * 2 * N * h * 4 * h
    final = 2 * 2 * h * h + 2 * N * h * p * p * C
    return (patch + time + d * block + final) / 1e9


@pytest.mark.parametrize(
    "C,size,p,h,d,heads,K",
    [(1, 28, 2, 48, 6, 4, None), (1, 28, 4, 64, 4, 4, 10), (3, 32, 4, 32, 2, 2, 10), (3, 32, 8, 96, 3, 6, None)],
)
def test_parameter_count_and_flops_match_the_closed_forms(C, size, p, h, d, heads, K):
    model = DiT(in_channels=C, image_size=size, patch_size=p, depth=d, hidden=h, heads=heads, num_classes=K)
    assert model.num_parameters == dit_parameters(C, p, h, d, K)
    x = torch.randn(2, C, size, size)
    assert model(x, torch.tensor([0, 999])).shape == x.shape
    build = lambda: DiT(in_channels=C, image_size=size, patch_size=p, depth=d, hidden=h, heads=heads, num_classes=K)  # noqa: E731
    # Counted on the meta device, so attention is counted too (on the CPU its fused kernel would count 0).
    assert gflops_per_image(build, (C, size, size)) == pytest.approx(dit_gflops(C, size, p, h, d), rel=1e-12)


@pytest.mark.parametrize("conditional", [False, True])
def test_output_is_exactly_zero_at_initialization(conditional):
    """adaLN-Zero: every gate and the final linear map start at zero, so the network starts at 0."""
    torch.manual_seed(0)
    model = DiT(**SMALL, num_classes=10 if conditional else None)
    y = torch.tensor([3, 10]) if conditional else None
    out = model(torch.randn(2, 1, 28, 28), torch.tensor([5, 700]), y)
    assert torch.equal(out, torch.zeros_like(out))


def test_adaln_zero_learns_from_the_output_inward_then_every_block_depends_on_t_and_y():
    """Step 1 moves only the final linear map (everything else is behind a zero); step 2 the gates, step 3
    the shifts and scales. Then each block's modulation, and the output, depend on t and on y."""
    torch.manual_seed(0)
    model = DiT(**SMALL, num_classes=10)
    schedule = make_schedule("cosine", 1000)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    x0, y = torch.rand(8, 1, 28, 28) * 2 - 1, torch.arange(8)

    def step():
        opt.zero_grad()
        t = torch.randint(0, 1000, (8,))
        diffusion_loss(model, x0, t, torch.randn_like(x0), schedule, "eps", y=y).mean().backward()
        opt.step()

    init = {k: v.clone() for k, v in model.state_dict().items()}
    step()
    moved = {k for k, v in model.state_dict().items() if not torch.equal(v, init[k])}
    assert moved == {"final.weight", "final.bias"}
    step(), step()
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        c = model.embed(torch.tensor([10, 10]), torch.tensor([3, 3]))
        c_t = model.embed(torch.tensor([900, 900]), torch.tensor([3, 3]))
        c_y = model.embed(torch.tensor([10, 10]), torch.tensor([7, 7]))
        for i, block in enumerate(model.blocks):
            m, m_t, m_y = (block.modulation(e).chunk(6, dim=1) for e in (c, c_t, c_y))
            for j, name in enumerate(["shift1", "scale1", "gate1", "shift2", "scale2", "gate2"]):
                assert not torch.allclose(m[j], m_t[j]), f"block {i} {name} ignores t"
                assert not torch.allclose(m[j], m_y[j]), f"block {i} {name} ignores y"
        out = model(x, torch.tensor([10, 10]), torch.tensor([3, 3]))
        assert not torch.allclose(out, model(x, torch.tensor([900, 900]), torch.tensor([3, 3])))
        assert not torch.allclose(out, model(x, torch.tensor([10, 10]), torch.tensor([7, 7])))
        null = model(x, torch.tensor([10, 10]), torch.full((2,), model.null_label))
        torch.testing.assert_close(model(x, torch.tensor([10, 10]), None), null)  # no label means the null label
    assert model.class_emb.num_embeddings == 11


def test_positional_embedding_is_the_2d_sincos_formula():
    grid, dim = 5, 16
    pos = sincos_2d(grid, dim)
    assert pos.shape == (grid * grid, dim)
    q = dim // 4
    for i in range(grid):
        for j in range(grid):
            w = [10_000 ** (-k / q) for k in range(q)]
            expected = (
                [math.sin(j * wk) for wk in w]
                + [math.cos(j * wk) for wk in w]
                + [math.sin(i * wk) for wk in w]
                + [math.cos(i * wk) for wk in w]
            )
            torch.testing.assert_close(pos[i * grid + j], torch.tensor(expected), rtol=0, atol=1e-6)
    assert not any(n == "pos" for n, _ in DiT(**SMALL).named_parameters())  # fixed, not learned


def test_unpatchify_puts_each_token_back_on_its_patch():
    model = DiT(in_channels=3, image_size=32, patch_size=4, depth=1, hidden=32, heads=2)
    img = torch.randn(2, 3, 32, 32)
    g, p = 8, 4
    tokens = img.reshape(2, 3, g, p, g, p).permute(0, 2, 4, 3, 5, 1).reshape(2, g * g, p * p * 3)  # (B, N, p p C)
    torch.testing.assert_close(model.unpatchify(tokens), img, rtol=0, atol=0)


@pytest.mark.parametrize("parameterization", ["eps", "x0", "v"])
def test_every_parameterization_trains_and_samples_with_guidance(parameterization):
    torch.manual_seed(0)
    model, schedule = DiT(**SMALL, num_classes=10), make_schedule("cosine", 100)
    x0, y = torch.rand(4, 1, 28, 28) * 2 - 1, torch.tensor([0, 1, 2, 3])
    loss = diffusion_loss(
        model, x0, torch.tensor([0, 30, 60, 99]), torch.randn_like(x0), schedule, parameterization, y=y
    )
    loss.mean().backward()
    assert loss.shape == (4,) and model.final.weight.grad.abs().sum() > 0
    images = sample(
        model.eval(), (4, 1, 28, 28), schedule, sampler="ddim", steps=3, parameterization=parameterization,
        guidance=2.0, labels=y, null_label=model.null_label, generator=torch.Generator().manual_seed(0),
    )  # fmt: skip
    assert images.shape == (4, 1, 28, 28) and torch.isfinite(images).all()


# -- the config: fields, errors, hashes ------------------------------------------------------------


@pytest.mark.parametrize(
    "model,message",
    [
        ({"backbone": "vit"}, "model.backbone: unknown backbone 'vit'; valid: dit, unet"),
        ({"backbone": "dit", "patch_size": 3}, "model.patch_size: 3 does not divide the 28x28 images"),
        ({"backbone": "dit", "hidden": 40, "heads": 3}, "model.hidden: 40 is not divisible by heads = 3"),
        ({"backbone": "dit", "hidden": 18, "heads": 3}, "model.hidden: 18 is not a multiple of 4"),
        ({"backbone": "dit", "depth": 0}, "model.depth: Input should be greater than or equal to 1"),
    ],
)
def test_bad_dit_fields_are_one_line_errors_naming_the_field(model, message):
    with pytest.raises(ConfigError) as err:
        build_config({"model": model}, "spec.yaml")
    assert str(err.value).startswith(f"spec.yaml: {message}") and "\n" not in str(err.value)


def test_cifar_sizes_are_checked_against_32_pixels():
    assert build_config({"data": {"dataset": "cifar10"}, "model": {"backbone": "dit", "patch_size": 8}})
    with pytest.raises(ConfigError, match="model.patch_size: 7 does not divide the 32x32 images"):
        build_config({"data": {"dataset": "cifar10"}, "model": {"backbone": "dit", "patch_size": 7}})


def test_hashes_of_unet_configs_are_pinned_and_unread_fields_do_not_split_arms():
    # Golden values, recomputed when the old-hash shims went (issue 25).
    assert Config().train_hash() == "6fb8f805f347"
    linear = {"model": {"channels": 16, "conditional": True}, "diffusion": {"schedule": "linear"}}
    assert build_config(linear).train_hash() == "1ab08fedfc0f"
    assert build_config({"model": {"backbone": "unet", "hidden": 256, "depth": 9}}).train_hash() == "6fb8f805f347"
    dit = build_config({"model": {"backbone": "dit"}})
    assert dit.train_hash() != Config().train_hash()
    assert (
        build_config({"model": {"backbone": "dit", "channels": 64, "channel_mult": [1]}}).train_hash()
        == dit.train_hash()
    )
    assert build_config({"model": {"backbone": "dit", "hidden": 96}}).train_hash() != dit.train_hash()
    assert build_config({"model": {"backbone": "dit", "dropout": 0.1}}).train_hash() != dit.train_hash()
    assert dit.flat()["model.hidden"] == 64  # every field is still logged: the exact config that ran


@pytest.mark.parametrize("backbone", sorted(BACKBONES))
def test_build_model_picks_the_backbone_by_name(backbone):
    config = build_config({"model": {"backbone": backbone, "conditional": True}})
    model = build_model(config, 1, 28, 10)
    assert type(model).__name__ == {"unet": "UNet", "dit": "DiT"}[backbone] and model.null_label == 10
    fields = set(BACKBONES[backbone].fields)
    assert fields <= set(type(config.model).model_fields) and fields <= set(config.model.identity())


# -- logged, loaded, reported ------------------------------------------------------------------------

TINY_DIT = [
    "model.backbone=dit",
    "model.patch_size=4",
    "model.depth=2",
    "model.hidden=32",
    "model.heads=2",
    "train.steps=4",
    "train.batch_size=8",
    "train.device=cpu",
    "eval.num_samples=8",
    "eval.batch_size=8",
    "eval.samplers=[{sampler: ddim, steps: 2}]",
]


def test_harness_train_with_a_dit_end_to_end(tmp_path, capsys):
    """The CLI trains, evaluates and reports the size of a DiT (untracked: the store is tested elsewhere)."""
    out = tmp_path / "m.json"
    args = sum((["--set", s] for s in TINY_DIT), [])
    assert main(["train", *args, "--run-dir", str(tmp_path / "run"), "--no-track", "--json", str(out)]) == 0
    expected = dit_parameters(1, 4, 32, 2, None)
    m = json.loads(out.read_text())
    assert m["train"]["num_parameters"] == expected and m["train"]["steps"] == 4
    assert m["train"]["gflops_per_image"] == pytest.approx(dit_gflops(1, 28, 4, 32, 2))
    assert [e["nfe"] for e in m["evals"]] == [2] and f"{expected:,} parameters" in capsys.readouterr().out


def test_the_training_run_logs_the_size_and_the_loader_reads_it(tmp_path):
    config = build_config({"model": {"backbone": "dit", "patch_size": 4, "depth": 1, "hidden": 16, "heads": 2}})
    config = config.model_copy(
        update={
            "train": config.train.model_copy(
                update={"steps": 1, "batch_size": 2, "precision": "fp32", "memory_format": "contiguous"}
            )
        }
    )
    images = torch.rand(4, 1, 28, 28) * 2 - 1
    data = SimpleNamespace(
        images=images, labels=torch.zeros(4, dtype=torch.long), channels=1, image_size=28, num_classes=10
    )
    tracker = MemoryTracker()
    train(config, tracker, run_dir=tmp_path, evaluator=NoEvaluation(), data=data, progress=False)
    expected = dit_parameters(1, 4, 16, 1, None)
    assert tracker.metrics[NUM_PARAMETERS] == [(None, expected)]
    assert tracker.metrics[GFLOPS_PER_IMAGE] == [(None, pytest.approx(dit_gflops(1, 28, 4, 16, 1)))]

    metrics = {k: v[-1][1] for k, v in tracker.metrics.items()}
    run = SimpleNamespace(
        info=SimpleNamespace(run_id="r", status="FINISHED", start_time=0, end_time=1000),
        data=SimpleNamespace(
            params={k: str(v) for k, v in config.flat().items()}, metrics=metrics, tags={HASH: config.train_hash()}
        ),  # as MLflow stores them
    )
    runs = _runs_table(
        [run, SimpleNamespace(info=run.info, data=SimpleNamespace(params={}, metrics={}, tags={HASH: "old"}))], []
    )
    assert runs["num_parameters"].iloc[0] == expected and runs["gflops_per_image"].iloc[0] == metrics[GFLOPS_PER_IMAGE]
    assert runs[["num_parameters", "gflops_per_image"]].iloc[1].isna().all()  # tracked before the size was logged


def test_the_report_states_each_arms_parameters_and_gflops(tmp_path):
    final = {(arm, S): {"fid": [50.0, 52.0]} for arm in ("unet", "dit")}
    data = fixture_data(
        tmp_path, final, axis="model.backbone", pngs=False, sizes={"unet": (280_177, 0.0959), "dit": (272_980, 0.1096)}
    )
    (section,) = [s for s in build_document(data).sections if s.title.startswith("The arms")]
    (table,) = section.tables
    assert table.header[:3] == ["arm", "parameters", "GFLOPs per image"]
    assert table.rows[0][:3] == ["unet", "280,177", "0.0959"] and table.rows[1][:3] == ["dit", "272,980", "0.11"]
    assert "largest arm (unet) has 1.03x the parameters" in section.paragraphs[0]
    assert "largest arm (dit) has 1.14x the GFLOPs per image" in section.paragraphs[0]
    data.runs["num_parameters"] = float("nan")  # runs tracked before the size was logged
    (section,) = [s for s in build_document(data).sections if s.title.startswith("The arms")]
    assert section.tables[0].rows[0][1] == "not logged" and "not logged" in section.paragraphs[0]


@pytest.mark.parametrize(
    "profile,sizes",
    [
        ("quick", {"unet": (280_177, 0.0959), "dit": (272_980, 0.110)}),
        ("full", {"unet": (4_634_305, 1.65), "dit": (4_621_940, 1.39)}),
    ],
)
def test_the_backbone_spec_compares_arms_of_about_equal_size(profile, sizes):
    """The sizes that experiments/ablation-backbone.yaml states in its comment, and 'about equal': within 3%."""
    path = Path(__file__).parents[1] / "experiments" / "ablation-backbone.yaml"
    plan = make_plan(load_spec(path), str(path), profile)
    built = {}
    for job in plan.jobs:
        build = lambda c=job.config: build_model(c, 1, 28, 10)  # noqa: E731
        built[job.config.model.backbone] = (build().num_parameters, gflops_per_image(build, (1, 28, 28)))
    assert {k: (n, pytest.approx(g, rel=0.01)) for k, (n, g) in built.items()} == sizes
    assert abs(built["dit"][0] / built["unet"][0] - 1) < 0.03


def test_speed_estimates_match_runs_by_the_fields_the_backbone_reads():
    """--dry-run's estimate finds earlier runs of the same network; fields a backbone ignores do not split them."""
    unet = dict(speed_key(build_config({"model": {"hidden": 256}})))
    assert [k for k in unet if k.startswith("model.")] == [
        "model.backbone", "model.channels", "model.channel_mult", "model.num_res_blocks",
        "model.attention_resolutions", "model.dropout", "model.conditional",
    ]  # fmt: skip  # the UNet's fields and the backbone's name: hidden, heads, ... are the DiT's
    dit = dict(speed_key(build_config({"model": {"backbone": "dit", "channels": 64}})))
    assert dit["model.backbone"] == "dit" and dit["model.hidden"] == 64 and "model.channels" not in dit
