"""Flow matching checked against the exact velocity of Gaussian data (tests/oracles.py: FlowOracle)."""

import json
import math

import pytest
import torch
import yaml
from oracles import FlowOracle

from harness.cli import main
from harness.config import Config, ConfigError, SamplerSetting, build_config
from harness.config.spec import load_spec, make_plan
from harness.diffusion.flow import FLOW_SAMPLERS, FLOW_TIMES, flow_loss, sample_flow, time_grid
from harness.evaluation.evaluate import sampling_nfe

MU = torch.linspace(-0.6, 0.6, 32).reshape(2, 4, 4)
S = torch.linspace(0.3, 0.9, 32).flip(0).reshape(2, 4, 4)
SCALE = 999.0  # the time input of a model with diffusion.timesteps = 1000
FLOW = {"process": "flow", "parameterization": "v"}


def _x1(n=500, seed=1):
    return torch.randn((n, 2, 4, 4), generator=torch.Generator().manual_seed(seed))


def _endpoint_error(sampler, steps, shift=1.0):
    x1 = _x1()
    x = sample_flow(
        FlowOracle(MU, S, SCALE), x1.shape, sampler=sampler, steps=steps, shift=shift, time_scale=SCALE, x_T=x1
    )
    return (x.double() - (MU + S * x1).double()).abs().max().item()


@pytest.mark.parametrize("sampler", sorted(FLOW_SAMPLERS))
def test_samplers_reach_the_exact_ode_endpoint(sampler):
    """The flow of N(mu, s^2) takes x_1 to mu + s x_1; the error falls as the steps grow."""
    errors = [_endpoint_error(sampler, n) for n in (5, 20, 100)]
    assert all(b < a for a, b in zip(errors, errors[1:])), errors
    assert errors[-1] < (0.05 if sampler == "euler" else 1e-3), errors  # max over 16,000 coordinates


def test_orders_of_convergence():
    """Doubling the steps halves Euler's error and quarters Heun's (its last Euler step included)."""
    mu, s = 0.3, 0.5
    x1 = torch.randn(1000, generator=torch.Generator().manual_seed(0), dtype=torch.float64)

    def velocity(x, t):  # FlowOracle's formula in float64, at any t
        v_t = (1 - t) ** 2 * s**2 + t**2
        return (t - (1 - t) * s**2) / v_t * (x - (1 - t) * mu) - mu

    def err(sampler, n):
        return (FLOW_SAMPLERS[sampler](velocity, x1.clone(), time_grid(n)) - (mu + s * x1)).abs().max().item()

    for sampler, order in [("euler", 1), ("heun", 2)]:
        ratios = [err(sampler, n) / err(sampler, 2 * n) for n in (20, 40, 80)]
        assert all(abs(r - 2**order) < 0.3 * order for r in ratios), (sampler, ratios)


def test_shift_maps_the_grid_as_sd3_says():
    s, u = 3.0, torch.linspace(1, 0, 9, dtype=torch.float64)
    torch.testing.assert_close(torch.tensor(time_grid(8, s), dtype=torch.float64), s * u / (1 + (s - 1) * u))
    assert time_grid(4) == [1.0, 0.75, 0.5, 0.25, 0.0]
    grid = time_grid(8, s)
    assert grid[0] == 1.0 and grid[-1] == 0.0 and all(b < a for a, b in zip(grid, grid[1:]))
    assert grid[4] == pytest.approx(0.75)  # the middle of the grid moves to high noise: s / (1 + s) at u = 1/2
    # The endpoint does not depend on the grid: a shifted Heun still converges to mu + s x_1 (at second
    # order; shift 3 leaves few steps near t = 0, where the flow of small s bends most).
    errors = [_endpoint_error("heun", n, shift=s) for n in (50, 100)]
    assert errors[1] < 0.03 and 3 < errors[0] / errors[1] < 5, errors


@pytest.mark.parametrize("w", [0.0, 0.5, 2.0])
def test_guided_samples_follow_one_plus_w_cond_minus_w_null(w):
    """With equal variances, (1 + w) v_c - w v_null is the velocity of N((1 + w) mu_c - w mu_null, s^2),
    so every guided sample is that mean plus s x_1."""
    s = torch.full((1, 4, 4), 0.4)
    mu = {0: torch.full((1, 4, 4), -0.5), 1: torch.full((1, 4, 4), 0.8), 2: torch.full((1, 4, 4), 0.15)}
    oracle = FlowOracle(mu, {k: s for k in mu}, SCALE)
    labels = torch.tensor([0, 1]).repeat_interleave(200)
    x1 = torch.randn((400, 1, 4, 4), generator=torch.Generator().manual_seed(0))
    kw = dict(sampler="heun", steps=50, time_scale=SCALE, guidance=w, labels=labels, null_label=2, x_T=x1)
    x = sample_flow(oracle, x1.shape, **kw).double()
    for c in (0, 1):
        predicted = (1 + w) * mu[c] - w * mu[2]
        torch.testing.assert_close(x[labels == c], (predicted + s * x1[labels == c]).double(), rtol=0, atol=3e-3)
    assert oracle.calls == 2 * 50 - 1  # one batched call per evaluation, conditional and null together


def test_loss_target_is_eps_minus_x0_at_the_sampled_time():
    seen = {}

    def model(x_t, t, y):
        seen.update(x_t=x_t, t=t)
        return torch.zeros_like(x_t)

    g = torch.Generator().manual_seed(0)
    x0, eps, t = torch.randn(6, 1, 4, 4, generator=g), torch.randn(6, 1, 4, 4, generator=g), torch.rand(6, generator=g)
    loss = flow_loss(model, x0, t, eps, None, time_scale=SCALE)
    tt = t.view(-1, 1, 1, 1)
    torch.testing.assert_close(seen["x_t"], (1 - tt) * x0 + tt * eps)
    torch.testing.assert_close(seen["t"], t * SCALE)
    torch.testing.assert_close(loss, (eps - x0).pow(2).flatten(1).mean(1))  # ||target - 0||^2


def test_training_times_have_their_distributions():
    g = torch.Generator().manual_seed(0)
    t = FLOW_TIMES["logit_normal"](200_000, g, "cpu")
    logit = torch.log(t / (1 - t))
    assert abs(t.median().item() - 0.5) < 0.005
    assert abs(logit.mean().item()) < 0.01 and abs(logit.std().item() - 1) < 0.01
    u = FLOW_TIMES["uniform"](200_000, g, "cpu")
    assert 0 <= u.min() and u.max() < 1 and abs(u.mean().item() - 0.5) < 0.005 and abs(u.var().item() - 1 / 12) < 0.001


@pytest.mark.parametrize(
    "diffusion,sampler,match",
    [
        (
            FLOW,
            {"sampler": "ddim"},
            r"eval\.samplers\.0\.sampler: 'ddim' does not sample process flow; valid for flow: euler, heun",
        ),
        (
            {},
            {"sampler": "euler"},
            r"eval\.samplers\.0\.sampler: 'euler' does not sample process ddpm; valid for ddpm: ddpm, ddim",
        ),
        ({}, {"sampler": "ddim", "time_shift": 3.0}, r"eval\.samplers\.0\.time_shift: 3 applies to process flow only"),
        (
            {"process": "flow", "parameterization": "eps"},
            {"sampler": "euler"},
            r"diffusion: process flow needs parameterization: v",
        ),
        (
            FLOW,
            {"sampler": "euler", "spacing": "linspace"},
            r"eval\.samplers\.0\.spacing: linspace applies to process ddpm only",
        ),
        ({**FLOW, "loss_weighting": "min_snr"}, {"sampler": "euler"}, "process flow needs loss_weighting: uniform"),
        ({"flow_time": "logit_normal"}, {"sampler": "ddim"}, "flow_time 'logit_normal' applies to process flow only"),
        ({**FLOW, "flow_time": "beta"}, {"sampler": "euler"}, r"diffusion\.flow_time: unknown flow time 'beta'"),
    ],
)
def test_settings_that_do_not_fit_the_process_are_one_line_errors(diffusion, sampler, match):
    with pytest.raises(ConfigError, match=match) as err:
        build_config({"diffusion": diffusion, "eval": {"samplers": [sampler]}}, "c.yaml")
    assert "\n" not in str(err.value) and str(err.value).startswith("c.yaml: ")


def test_the_default_hash_is_pinned_and_flow_ignores_what_it_never_reads():
    # Golden value, recomputed when the old-hash shims went (issue 25).
    assert Config().train_hash() == "6fb8f805f347"
    euler = {"eval": {"samplers": [{"sampler": "euler"}]}}
    flows = [
        build_config({"diffusion": {**FLOW, "schedule": sch}, **euler}).train_hash() for sch in ("linear", "cosine")
    ]
    assert flows[0] == flows[1] != Config().train_hash()
    logit = build_config({"diffusion": {**FLOW, "flow_time": "logit_normal"}, **euler}).train_hash()
    assert logit != flows[0]


def test_nfe_is_counted_for_flow_samplers():
    cfg = build_config(
        {"model": {"conditional": True}, "diffusion": FLOW, "eval": {"samplers": [{"sampler": "euler"}]}}
    )
    assert sampling_nfe(cfg, SamplerSetting(sampler="euler", steps=10)) == 10
    assert sampling_nfe(cfg, SamplerSetting(sampler="heun", steps=10)) == 19
    # guided: each call runs a doubled batch, two network evaluations per sample
    assert sampling_nfe(cfg, SamplerSetting(sampler="heun", steps=5, time_shift=3.0, guidance=2.0)) == 18
    assert SamplerSetting(sampler="heun", steps=5, time_shift=3.0).label == "heun-5-eta0-w0-3.0"


def _spec(tmp_path, evaluate, axes=None):
    spec = {
        "name": "p",
        "question": "q",
        "axes": axes or {"zip": [{"diffusion.process": ["ddpm", "flow"], "diffusion.parameterization": ["eps", "v"]}]},
        "evaluate": evaluate,
    }
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    return load_spec(path), str(path)


def test_spec_pairs_each_setting_with_the_arms_of_its_process(tmp_path):
    spec, src = _spec(
        tmp_path,
        {"sampler": ["ddim", "euler"], "steps": [10], "settings": [{"sampler": "heun", "steps": 5, "process": "flow"}]},
    )
    plan = make_plan(spec, src)
    labels = {job.arm["diffusion.process"]: [s.label for s in job.config.eval.samplers] for job in plan.jobs}
    assert labels == {"ddpm": ["ddim-10-eta0-w0"], "flow": ["euler-10-eta0-w0", "heun-5-eta0-w0"]}
    assert [s["sampler"] for s in plan.settings] == ["ddim", "euler", "heun"]
    # Without ``process``, heun fits both processes and goes to both arms.
    spec, src = _spec(tmp_path, {"sampler": ["ddim", "euler"], "settings": [{"sampler": "heun", "steps": 5}]})
    assert all("heun" in [s.sampler for s in job.config.eval.samplers] for job in make_plan(spec, src).jobs)


@pytest.mark.parametrize(
    "evaluate,axes,match",
    [
        (
            {"settings": [{"sampler": "ddim", "process": "flow"}]},
            None,
            r"evaluate\.settings\.0\.sampler: 'ddim' does not sample process flow",
        ),
        (
            {"sampler": ["ddim"], "settings": [{"sampler": "euler"}]},
            {"grid": {"diffusion.schedule": ["linear"]}},
            r"evaluate\.settings\.0\.sampler: 'euler' does not sample process ddpm; valid for ddpm",
        ),
        ({"sampler": ["ddim"]}, None, r"spec\.yaml: evaluate: no setting fits process flow; its samplers: euler, heun"),
        (
            {"settings": [{"sampler": "heun", "process": "flux"}]},
            None,
            r"evaluate\.settings: 0\.process: unknown process 'flux'; valid: ddpm, flow",
        ),
        (
            {"settings": [{"sampler": "euler", "time_shift": "x"}]},
            None,
            r"evaluate\.settings\.0\.time_shift: Input should be a valid number",
        ),
        (
            {"sampler": ["ddim"], "settings": [{"sampler": "heun", "process": "flow"}]},
            {"grid": {"diffusion.schedule": ["linear"]}},
            r"evaluate\.settings\.0\.process: flow is not the arms' process \(ddpm\)",
        ),
    ],
)
def test_spec_settings_that_fit_no_arm_are_one_line_errors(tmp_path, evaluate, axes, match):
    with pytest.raises(ConfigError, match=match):
        make_plan(*_spec(tmp_path, evaluate, axes))


def test_train_with_flow_end_to_end(tmp_path):
    """`harness train` with process flow: a finite loss and finite metrics of guided Euler and Heun samples."""
    out = tmp_path / "m.json"
    sets = [
        "diffusion.process=flow",
        "diffusion.parameterization=v",
        "diffusion.flow_time=logit_normal",
        "model.channels=8",
        "model.channel_mult=[1, 2]",
        "model.attention_resolutions=[]",
        "model.conditional=true",
        "train.steps=6",
        "train.batch_size=8",
        "train.warmup_steps=1",
        "train.device=cpu",
        "eval.num_samples=16",
        "eval.batch_size=16",
        "eval.samplers=[{sampler: euler, steps: 3}, {sampler: heun, steps: 2, guidance: 1.0, time_shift: 3.0}]",
    ]
    args = [
        "train",
        *sum((["--set", s] for s in sets), []),
        "--no-track",
        "--json",
        str(out),
        "--run-dir",
        str(tmp_path),
    ]
    assert main(args) == 0
    m = json.loads(out.read_text())
    assert math.isfinite(m["train"]["final_loss"])
    assert [(e["sampler"], e["nfe"]) for e in m["evals"]] == [("euler", 3), ("heun", 6)]  # heun guided: a doubled batch
    assert all(math.isfinite(e["fid"]) and math.isfinite(e["recognizability"]) for e in m["evals"])


@pytest.mark.parametrize("name", ["ddpm", "flow"])
def test_every_process_keeps_the_shared_contract(name):
    """The training loop and the evaluator use a process only through loss() and sample(): per-example loss
    (B,), each example's time an integer in [0, T), and samples of x_T's shape (a new process must too)."""
    from harness.diffusion.processes import PROCESSES
    from harness.diffusion.schedules import make_schedule

    process = PROCESSES[name]
    config = Config(
        diffusion={"process": name, "parameterization": "v" if name == "flow" else "eps"},
        eval={"samplers": [{"sampler": next(iter(process.samplers)), "steps": 3}]},
    )
    dc, schedule = config.diffusion, make_schedule("linear", 1000)
    net = lambda x, t, y: 0.5 * x  # noqa: E731 - any network of the (x, t, y) contract
    x0 = torch.rand(8, 1, 4, 4) * 2 - 1
    loss, t = process.training_loss(dc, schedule)(net, x0, None, torch.Generator().manual_seed(0))
    assert loss.shape == (8,) and torch.isfinite(loss).all()
    assert t.dtype == torch.long and 0 <= int(t.min()) and int(t.max()) < schedule.T
    x_T = torch.randn(2, 1, 4, 4, generator=torch.Generator().manual_seed(1))
    out = process.sample(net, schedule, dc, config.eval.samplers[0], x_T=x_T)
    assert out.shape == x_T.shape and torch.isfinite(out).all()


def test_process_flow_alone_derives_what_flow_fixes():
    d = build_config({"diffusion": {"process": "flow"}, "eval": {"samplers": [{"sampler": "euler"}]}}).diffusion
    assert (d.parameterization, d.loss_weighting, d.zero_terminal_snr) == ("v", "uniform", False)


@pytest.mark.parametrize(
    "field,value", [("parameterization", "x0"), ("loss_weighting", "min_snr"), ("zero_terminal_snr", True)]
)
def test_a_conflicting_explicit_value_under_flow_is_a_one_line_error(field, value):
    data = {"diffusion": {"process": "flow", field: value}, "eval": {"samplers": [{"sampler": "euler"}]}}
    with pytest.raises(ConfigError, match=f"process flow needs {field}: ") as err:
        build_config(data, "c.yaml")
    assert "\n" not in str(err.value)
