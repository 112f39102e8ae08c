"""Classifier guidance (Dhariwal & Nichol 2021): the closed form of a two-Gaussian mixture, validation,
the noise-aware classifier's cache, and the labels and hashes of unguided settings."""

import pytest
import torch
import yaml

from harness.config import ConfigError, SamplerSetting, build_config
from harness.config.spec import load_spec, make_plan
from harness.diffusion.samplers import sample
from harness.diffusion.schedules import make_schedule
from harness.evaluation.noisy_classifier import Recipe, cache_path, noisy_classifier
from harness.training.data import ImageData, fingerprint

# Data: x_0 ~ sum_y pi_y N(mu_y 1, SIGMA^2 I). Then x_t | y ~ N(sqrt(abar) mu_y 1, v_t I) with
# v_t = abar SIGMA^2 + 1 - abar, so the exact noisy posterior p(y | x_t) and the exact eps of the mixture,
# eps(x_t) = -sqrt(1 - abar) grad log p(x_t) = sqrt(1 - abar) sum_y p(y | x_t) (x_t - sqrt(abar) mu_y) / v_t,
# are closed forms. With s = 1 the guided score is that of p(x_t | y): samples are N(mu_y, SIGMA^2) exactly.
SCHEDULE = make_schedule("linear", 1000)
MU, SIGMA, PI = torch.tensor([-1.0, 1.0]), 0.5, torch.tensor([0.7, 0.3])


def _abar(t, x):
    return SCHEDULE.alphas_cumprod[t].to(x.dtype).view(-1, 1, 1, 1)  # (B, 1, 1, 1)


def bayes_logits(x_t, t):
    """log p(y | x_t) up to a constant per row: (B, C, H, W) -> (B, 2)."""
    abar = _abar(t, x_t)
    v = abar * SIGMA**2 + 1 - abar
    d = x_t[:, None] - abar.sqrt()[:, None] * MU.view(1, 2, 1, 1, 1)  # (B, 2, C, H, W)
    return PI.log() - d.pow(2).flatten(2).sum(2) / (2 * v.view(-1, 1))


def mixture_eps(x_t, t, y=None):
    abar = _abar(t, x_t)
    p = bayes_logits(x_t, t).softmax(dim=1)  # (B, 2)
    mean = abar.sqrt() * (p[:, :, None, None, None] * MU.view(1, 2, 1, 1, 1)).sum(1)  # E[sqrt(abar) mu_y | x_t]
    return (1 - abar).sqrt() * (x_t - mean) / (abar * SIGMA**2 + 1 - abar)


def mixture_v(x_t, t, y=None):
    abar, eps = _abar(t, x_t), mixture_eps(x_t, t)
    x0 = (x_t - (1 - abar).sqrt() * eps) / abar.sqrt()
    return abar.sqrt() * eps - (1 - abar).sqrt() * x0


@pytest.mark.parametrize(
    "sampler, steps, parameterization, model, y",
    [
        ("ddim", 100, "eps", mixture_eps, 0),
        ("ddim", 100, "eps", mixture_eps, 1),
        ("ddim", 100, "v", mixture_v, 0),  # guidance shifts eps after the v -> (x0, eps) conversion
        # Ancestral steps add the posterior variance of each skipped span: fewer than ~250 of 1000 shrink
        # the std (0.47 at 100 steps), a discretization error that guidance does not cause.
        ("ddpm", 250, "eps", mixture_eps, 1),
    ],
)
def test_guidance_with_the_bayes_classifier_samples_the_class_gaussian(sampler, steps, parameterization, model, y):
    n = 1000
    x = sample(
        model,
        (n, 1, 2, 2),
        SCHEDULE,
        sampler=sampler,
        steps=steps,
        parameterization=parameterization,
        labels=torch.full((n,), y),
        classifier=bayes_logits,
        classifier_scale=1.0,
        generator=torch.Generator().manual_seed(0),
    )
    # Standard errors with n * 4 = 4000 draws: 0.008 for the mean, 0.006 for the std.
    assert x.mean().item() == pytest.approx(MU[y].item(), abs=0.03)
    assert x.std().item() == pytest.approx(SIGMA, abs=0.03)


def test_without_guidance_the_mixture_keeps_both_classes():
    """The same sampler at s = 0 draws the mixture: its class shares are pi, so guidance did the steering."""
    x = sample(
        mixture_eps, (1000, 1, 2, 2), SCHEDULE, sampler="ddim", steps=100, generator=torch.Generator().manual_seed(0)
    )
    assert (x.mean(dim=(1, 2, 3)) > 0).float().mean().item() == pytest.approx(PI[1].item(), abs=0.03)


# -- validation --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "diffusion, setting, match",
    [
        (
            {},
            {"classifier_scale": -1.0},
            r"eval\.samplers\.0\.classifier_scale: Input should be greater than or equal to 0",
        ),
        (
            {"process": "flow", "parameterization": "v"},
            {"sampler": "euler", "classifier_scale": 1.0},
            r"eval\.samplers\.0\.classifier_scale: 1 applies to process ddpm only",
        ),
    ],
)
def test_bad_classifier_scales_are_one_line_errors(diffusion, setting, match):
    with pytest.raises(ConfigError, match=match):
        build_config({"diffusion": diffusion, "eval": {"samplers": [setting]}}, "x.yaml")


def test_sample_needs_a_classifier_and_labels():
    with pytest.raises(ValueError, match="classifier_scale must be >= 0"):
        sample(mixture_eps, (1, 1, 2, 2), SCHEDULE, sampler="ddim", steps=2, classifier_scale=-1.0)
    with pytest.raises(ValueError, match="needs a classifier and the labels"):
        sample(mixture_eps, (1, 1, 2, 2), SCHEDULE, sampler="ddim", steps=2, classifier_scale=1.0)


def test_classifier_guidance_works_with_unconditional_models():
    config = build_config({"eval": {"samplers": [{"classifier_scale": 2.0}]}}, "x.yaml")
    assert not config.model.conditional and config.eval.samplers[0].classifier_scale == 2.0


# -- labels and hashes -------------------------------------------------------------------------------


def test_scale_zero_leaves_labels_and_hashes_unchanged():
    assert SamplerSetting().label == "ddim-50-eta0-w0"
    assert SamplerSetting(sampler="ddpm", steps=20, spacing="linspace").label == "ddpm-20-eta0-w0-linspace"
    assert SamplerSetting(classifier_scale=2.0).label == "ddim-50-eta0-w0-cg2"
    # Runs logged before the field existed read back as scale 0: the same setting, not a missing one.
    assert SamplerSetting.from_params({"sampler": "ddim", "steps": "50"}).key == SamplerSetting().key
    assert build_config({}, "x.yaml").train_hash() == "6fb8f805f347"  # pinned in test_flow as well
    guided = build_config({"eval": {"samplers": [{"classifier_scale": 1.0}]}}, "x.yaml")
    assert guided.train_hash() == "6fb8f805f347"  # an evaluation setting, not the trained model


def test_spec_gives_classifier_free_settings_to_conditional_arms_only(tmp_path):
    spec = {
        "name": "x",
        "question": "q",
        "base": {"train": {"steps": 2}},
        "axes": {"grid": {"model.conditional": [True, False]}},
        "evaluate": {"steps": [3], "settings": [{"steps": 3, "guidance": 2.0}, {"steps": 3, "classifier_scale": 1.0}]},
    }
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    plan = make_plan(load_spec(path), str(path), None)
    labels = {job.arm["model.conditional"]: [s.label for s in job.config.eval.samplers] for job in plan.jobs}
    assert labels == {
        True: ["ddim-3-eta0-w0", "ddim-3-eta0-w2", "ddim-3-eta0-w0-cg1"],
        False: ["ddim-3-eta0-w0", "ddim-3-eta0-w0-cg1"],
    }
    spec["axes"] = {"grid": {"model.conditional": [False]}}
    path.write_text(yaml.safe_dump(spec))
    with pytest.raises(ConfigError, match=r"evaluate\.settings\.0\.guidance: 2\.0 needs model\.conditional: true"):
        make_plan(load_spec(path), str(path), None)


# -- the noise-aware classifier's cache ----------------------------------------------------------------


def _tiny_data() -> ImageData:
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(40) % 2
    images = (torch.rand(40, 1, 8, 8, generator=g) * 0.2 + labels.view(-1, 1, 1, 1) * 0.8 - 0.5).clamp(-1, 1)
    return ImageData("tiny", images, labels, 2, fingerprint(images, labels))


def test_noise_aware_classifier_is_trained_once_per_data_schedule_and_recipe(tmp_path):
    data, recipe = _tiny_data(), Recipe(widths=(8, 16), steps=3, batch_size=8)
    with torch.no_grad():  # as the evaluator asks for it, while sampling
        first = noisy_classifier(data, SCHEDULE, tmp_path, recipe, progress=False)
    again = noisy_classifier(data, SCHEDULE, tmp_path, recipe, progress=False)
    assert not first.from_cache and again.from_cache
    assert again.accuracy == first.accuracy and again.train_seconds == first.train_seconds
    for a, b in zip(first.net.state_dict().values(), again.net.state_dict().values()):
        assert torch.equal(a, b)
    names = [p.name for p in tmp_path.iterdir() if p.suffix != ".lock"]  # the lock that serializes trainers stays
    assert names == [cache_path(data, SCHEDULE, tmp_path, recipe).name]  # no temp files

    # Another schedule (even the same name with another T) or recipe is another classifier.
    def path(schedule=SCHEDULE, r=recipe):
        return cache_path(data, schedule, tmp_path, r)

    assert path(make_schedule("linear", 500)) != path() != path(make_schedule("cosine", 1000))
    assert path(r=Recipe(widths=(8, 16), steps=4, batch_size=8)) != path()
    logits = again.net(data.images[:4], torch.tensor([0, 10, 500, 999]))
    assert logits.shape == (4, 2) and torch.isfinite(logits).all()


def test_classifier_calls_are_not_counted_as_network_evaluations():
    from harness.evaluation.evaluate import sampling_nfe

    config = build_config({}, "x.yaml")
    assert sampling_nfe(config, SamplerSetting(steps=10, classifier_scale=2.0)) == 10
    assert sampling_nfe(config, SamplerSetting(sampler="heun", steps=10, classifier_scale=2.0)) == sampling_nfe(
        config, SamplerSetting(sampler="heun", steps=10)
    )


def test_classifier_guidance_of_a_latent_model_is_refused():
    """The noise-aware classifier is trained on pixels; its gradient means nothing on latents."""
    import pytest as _pytest

    from harness.config import Config

    with _pytest.raises(ValueError, match=r"eval.samplers.0.classifier_scale: applies to data.space pixel only"):
        Config.model_validate(
            {
                "data": {"space": "latent"},
                "eval": {"samplers": [{"sampler": "ddim", "steps": 10, "classifier_scale": 1.0}]},
            }
        )


def test_jobs_asking_together_train_the_classifier_once(tmp_path, monkeypatch):
    """Two seeds of an unconditional arm evaluate side by side: one trains, the other waits and loads."""
    import threading

    import harness.evaluation.noisy_classifier as nc

    trained, real = [], nc.train_noisy_classifier
    monkeypatch.setattr(nc, "train_noisy_classifier", lambda *a, **k: trained.append(1) or real(*a, **k))
    data, recipe = _tiny_data(), Recipe(widths=(8, 16), steps=3, batch_size=8)
    results = []
    threads = [
        threading.Thread(
            target=lambda: results.append(noisy_classifier(data, SCHEDULE, tmp_path, recipe, progress=False))
        )
        for _ in range(2)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(trained) == 1 and sorted(r.from_cache for r in results) == [False, True]


def test_a_clipping_sampler_keeps_guided_x0_in_the_data_range():
    """A learned classifier's gradient at high noise, scaled by (1 - abar) / sqrt(abar) in x0_hat, once
    saturated every MNIST sample; with clip_x0 the shifted pair is clipped and stays consistent with x_t."""
    import math

    from harness.diffusion.guidance import classifier_guided
    from harness.diffusion.parameterizations import Prediction

    x_t = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    abar = 1e-4  # the cosine schedule's first step: x0_hat moves by ~100 x the gradient
    denoise = lambda x, t, a: Prediction(torch.zeros_like(x), x / math.sqrt(1 - a))  # noqa: E731
    steep = lambda x, t: torch.stack([x.flatten(1).sum(1), -x.flatten(1).sum(1)], dim=1)  # noqa: E731
    y = torch.zeros(4, dtype=torch.long)
    loose = classifier_guided(denoise, steep, 1.0, y)(x_t, 999, abar)
    assert loose.x0.abs().max() > 10  # what the unclipped shift does
    tight = classifier_guided(denoise, steep, 1.0, y, clip_x0=True)(x_t, 999, abar)
    assert tight.x0.abs().max() <= 1.0
    assert torch.allclose(math.sqrt(abar) * tight.x0 + math.sqrt(1 - abar) * tight.eps, x_t, atol=1e-5)
