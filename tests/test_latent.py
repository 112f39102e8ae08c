"""Latent diffusion (data.space: latent): the autoencoder reconstructs, its latents have unit std, it is cached
and frozen, samples are decoded, and a pixel config's hash does not move."""

import math

import pytest
import torch

from harness.config import AutoencoderConfig, ConfigError, build_config, load_config
from harness.config.schema import AUTOENCODER_FLOOR, AUTOENCODER_SCALE, floor_key
from harness.evaluation.evaluate import Evaluator, default_cache_dir
from harness.evaluation.features import domain_classifier
from harness.evaluation.metrics import recognizability
from harness.models.autoencoder import Posterior
from harness.tracker import MemoryTracker
from harness.training import autoencoder as latent
from harness.training.data import load_dataset
from harness.training.train import NoEvaluation, train

DEFAULT_HASH = "6fb8f805f347"  # tests/test_flow.py pins the default config's hash
TINY_AE = {"steps": 3, "channels": 8, "batch_size": 16}
TINY = {
    "data": {"space": "latent"},
    "autoencoder": TINY_AE,
    "model": {"channels": 8, "channel_mult": [1, 2], "attention_resolutions": []},
    "train": {
        "steps": 6,
        "batch_size": 8,
        "warmup_steps": 1,
        "device": "cpu",
        "precision": "fp32",
        "memory_format": "contiguous",
        "log_every": 3,
    },
    "eval": {"num_samples": 16, "batch_size": 16, "samplers": [{"sampler": "ddim", "steps": 3}]},
}


@pytest.fixture(scope="module")
def data():
    return load_dataset("mnist-5k")


@pytest.fixture(scope="module")
def space(data, tmp_path_factory):
    """The default autoencoder section's latent space, trained into a fresh cache directory (minutes on a CPU)."""
    return latent.latent_space(data, AutoencoderConfig(), tmp_path_factory.mktemp("ae"), progress=False)


@pytest.fixture(scope="module")
def tiny_space(data, tmp_path_factory):
    return latent.latent_space(data, AutoencoderConfig(**TINY_AE), tmp_path_factory.mktemp("tiny"), progress=False)


# -- config -----------------------------------------------------------------------------------------


def test_a_pixel_config_hashes_as_before_the_autoencoder_existed():
    assert build_config({}).train_hash() == DEFAULT_HASH
    # A pixel model reads no autoencoder field: changing one is the same model.
    assert build_config({"autoencoder": {"kl_weight": 0.5}}).train_hash() == DEFAULT_HASH
    assert build_config({"data": {"space": "pixel"}}).train_hash() == DEFAULT_HASH
    a = build_config({"data": {"space": "latent"}})
    b = build_config({"data": {"space": "latent"}, "autoencoder": {"kl_weight": 0.5}})
    assert len({a.train_hash(), b.train_hash(), DEFAULT_HASH}) == 3


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("data.space=voxel", "--set data.space: unknown data space 'voxel'; valid: latent, pixel"),
        ("autoencoder.downsample=3", "autoencoder.downsample: 3 is not a power of two (1, 2, 4, ...)"),
        ("autoencoder.kl_weight=-1", "--set autoencoder.kl_weight: Input should be greater than or equal to 0"),
    ],
)
def test_bad_latent_fields_are_one_line_errors(override, message):
    with pytest.raises(ConfigError) as err:
        load_config(None, ["data.space=latent", override] if "space=" not in override else [override])
    assert str(err.value).endswith(message) and "\n" not in str(err.value)


def test_the_backbone_is_checked_against_the_latent_side():
    # 7x7 latents reach 7, 4, 2: attention at 14 is never used (at 28x28 pixels it is).
    build_config({"model": {"attention_resolutions": [14]}})
    with pytest.raises(ConfigError, match=r"model\.attention_resolutions: 14 is never reached.*7, 4, 2.*latents"):
        build_config({"data": {"space": "latent"}, "model": {"attention_resolutions": [14]}})


def test_kl_of_the_posterior_against_its_closed_form():
    # KL(N(m, v) || N(0, 1)) = (m^2 + v - 1 - log v) / 2 per element.
    mean = torch.tensor([[0.0, 1.0, 0.0, 2.0]]).view(1, 4, 1, 1)
    var = torch.tensor([[1.0, 1.0, 2.0, 0.5]]).view(1, 4, 1, 1)
    expected = sum((m * m + v - 1 - math.log(v)) / 2 for m, v in [(0, 1), (1, 1), (0, 2), (2, 0.5)]) / 4
    assert Posterior(mean, var.log()).kl().item() == pytest.approx(expected, rel=1e-6)


# -- the autoencoder --------------------------------------------------------------------------------


@pytest.mark.slow  # 400 steps of the default autoencoder: about 5 minutes on a busy 2-core CPU
def test_reconstructions_of_held_out_digits_are_recognizable(data, space):
    recognizer = domain_classifier(data, default_cache_dir() / "classifiers", reject=True, progress=False)
    x = data.images[latent.held_out(data)[1]]  # digits the autoencoder never trained on
    x_hat = space.decode(space.encode(x))
    assert x_hat.shape == x.shape
    assert recognizability(recognizer.probs(x_hat), 0.9) >= 0.9


def test_scaled_latents_have_unit_std(data, tiny_space):
    z = tiny_space.latent_data(data).images  # (N, 4, 7, 7)
    assert z.shape == (len(data), 4, 7, 7)
    train_idx, held = latent.held_out(data)
    assert z[train_idx].std().item() == pytest.approx(1.0, abs=1e-4)  # s was computed on this split
    assert z[held].std().item() == pytest.approx(1.0, abs=0.1)  # and carries over to unseen digits
    raw = tiny_space.autoencoder.encode(data.images[train_idx]).mean  # E(x) before scaling
    assert tiny_space.scale == pytest.approx(1 / raw.std().item(), rel=1e-4)


def test_the_cache_is_reused_and_keyed_by_the_config(data, tmp_path, monkeypatch):
    ac = AutoencoderConfig(**TINY_AE)
    first = latent.latent_space(data, ac, tmp_path, progress=False)
    assert not first.from_cache and latent.cache_path(data, ac, tmp_path).is_file()

    def no_training(*args, **kwargs):
        raise AssertionError("trained again although the cache holds this autoencoder")

    monkeypatch.setattr(latent, "train_autoencoder", no_training)
    again = latent.latent_space(data, ac, tmp_path, progress=False)
    assert again.from_cache and again.scale == first.scale and again.fingerprint == first.fingerprint
    for p, q in zip(first.autoencoder.parameters(), again.autoencoder.parameters(), strict=True):
        assert torch.equal(p, q)
    other = AutoencoderConfig(**{**TINY_AE, "kl_weight": 1e-2})
    assert latent.cache_path(data, other, tmp_path) != latent.cache_path(data, ac, tmp_path)
    with pytest.raises(AssertionError, match="trained again"):  # another section is another autoencoder
        latent.latent_space(data, other, tmp_path, progress=False)


# -- diffusion on latents ---------------------------------------------------------------------------


def test_the_autoencoder_gets_no_gradient_during_diffusion_training(data, tmp_path):
    config = build_config(TINY)
    space = latent.latent_space(data, config.autoencoder, tmp_path / "cache", progress=False)
    before = {k: v.clone() for k, v in space.autoencoder.state_dict().items()}
    result = train(config, run_dir=tmp_path / "run", data=data, evaluator=NoEvaluation(space), progress=False)
    assert result.steps == 6 and math.isfinite(result.final_loss)
    for p in space.autoencoder.parameters():
        assert not p.requires_grad and p.grad is None
    for k, v in space.autoencoder.state_dict().items():
        assert torch.equal(v, before[k]), k
    # The network learned latents: its first convolution reads the autoencoder's 4 channels, not 1.
    state = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)["model"]
    assert next(v for k, v in state.items() if v.dim() == 4).shape[1] == config.autoencoder.latent_channels


def test_latent_training_needs_the_autoencoder(data, tmp_path):
    with pytest.raises(ConfigError, match="data.space: latent needs an evaluator"):
        train(build_config(TINY), run_dir=tmp_path, data=data, evaluator=NoEvaluation(), progress=False)


def test_samples_are_decoded_and_the_floor_is_logged(data, tmp_path):
    config = build_config(TINY)
    evaluator = Evaluator(config, data, cache_dir=None, progress=False)
    assert evaluator.x_T.shape == (16, 4, 7, 7)
    model = lambda x, t, y: torch.zeros_like(x)  # noqa: E731 - eps_hat = 0: any network will do
    generated = evaluator.generate(model, config.eval.samplers[0])
    images, nfe = generated.images, generated.cost.nfe
    assert images.shape == (16, 1, 28, 28) and nfe == 3 and images.abs().max() <= 1
    tracker = MemoryTracker()
    evaluator.run(model, step=config.train.steps, tracker=tracker)
    floor = [floor_key(m) for m in AUTOENCODER_FLOOR]
    assert set(evaluator.floor) == {*floor, AUTOENCODER_SCALE}
    assert 0 <= evaluator.floor[floor_key("recognizability")] <= 1 and evaluator.floor[floor_key("fid")] >= 0
    assert all(tracker.metrics[k] == [(config.train.steps, evaluator.floor[k])] for k in floor)
    evaluator.run(model, step=config.train.steps + 1, tracker=tracker)  # a constant: logged once
    assert all(len(tracker.metrics[k]) == 1 for k in floor)


def test_the_floor_scores_as_many_reconstructions_as_the_arms_score_samples(data, tiny_space, monkeypatch):
    """FID's bias depends on N: the floor uses eval.num_samples held-out digits (at most the held-out tenth)."""
    import harness.evaluation.latent as latent

    seen = []
    monkeypatch.setattr(latent, "fidelity_metrics", lambda x, *a, **k: seen.append(len(x)) or {"fid": 1.0})
    monkeypatch.setattr(latent, "recognizability", lambda probs, threshold: 1.0)
    fake = type("C", (), {"probs": staticmethod(lambda x: x)})()
    for n in (64, 10_000):
        latent.reconstruction_floor(tiny_space, data, fake, fake, cache_dir="unused", threshold=0.9, num_samples=n)
    assert seen == [64, len(latent.held_out(data)[1])] and seen[1] == 500  # mnist-5k's held-out tenth
