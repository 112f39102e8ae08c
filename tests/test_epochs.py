"""Training counted in epochs: the conversion to steps, its errors, the hash, and where evaluations land."""

import math
from types import SimpleNamespace

import pytest
import torch

from harness.config import (
    DATASET_SIZES,
    Config,
    ConfigError,
    DataConfig,
    SamplerSetting,
    TrainConfig,
    build_config,
    load_config,
    steps_per_epoch,
)
from harness.config.spec import load_spec, make_plan
from harness.orchestration.budget import Budget
from harness.result import EvalResult
from harness.tracker import MemoryTracker
from harness.training import checkpoint
from harness.training.data import DATASETS, load_dataset
from harness.training.train import train

EXERCISE = "experiments/seed-exercise.yaml"


@pytest.mark.parametrize(
    "dataset,batch,expected",
    [
        ("mnist-5k", 64, 79),  # 5,000 / 64 = 78.1: the last, partial batch is a step
        ("mnist-5k", 50, 100),  # divides exactly: no extra step
        ("mnist-5k", 5000, 1),
        ("mnist-5k", 6000, 1),  # a batch larger than the data set is one step
        ("mnist", 128, 469),
        ("cifar10", 128, 391),
    ],
)
def test_an_epoch_is_ceil_of_images_over_batch(dataset, batch, expected):
    assert steps_per_epoch(dataset, batch) == expected == math.ceil(DATASET_SIZES[dataset] / batch)


def test_epochs_resolve_into_steps_with_the_hash_of_the_equivalent_steps():
    by_epochs = build_config({"train": {"epochs": 100, "batch_size": 64}})
    by_steps = build_config({"train": {"steps": 7900, "batch_size": 64}})
    assert by_epochs.train.steps == 7900 and by_epochs.train.epochs == 100
    assert by_epochs.train_hash() == by_steps.train_hash()
    assert build_config({"train": {"epochs": 101, "batch_size": 64}}).train_hash() != by_steps.train_hash()
    # A resolved config (a worker's task, a checkpoint's) holds both, consistent: it validates as it is.
    again = Config.model_validate_json(by_epochs.model_dump_json())
    assert again == by_epochs and again.train_hash() == by_epochs.train_hash()
    assert load_config(overrides=["train.epochs=2", "train.batch_size=64"]).train.steps == 158


def test_existing_hashes_do_not_change():
    """Golden hashes (recomputed when the old-hash shims went, issue 25)."""
    assert Config().train_hash() == "6fb8f805f347"
    assert build_config({"train": {"steps": 790, "batch_size": 64}}).train_hash() == "795152a7482d"
    plan = make_plan(load_spec("experiments/recognizability.yaml"), "r", "quick")
    assert [j.config_hash for j in plan.jobs] == ["ea09b2144e17", "9ace9c6d5f5a"]
    # eval_epochs, once set, is part of the hash as eval_every is: the runs log different evaluations.
    with_evals = build_config({"train": {"steps": 790, "batch_size": 64, "eval_epochs": [5]}})
    assert with_evals.train_hash() != "795152a7482d"


@pytest.mark.parametrize(
    "train,message",
    [
        (
            {"epochs": 10, "steps": 5, "batch_size": 64},
            "x.yaml: train.epochs: give train.steps or train.epochs, not both (10 epochs of mnist-5k at batch 64 "
            "are 790 steps, not 5)",
        ),
        ({"epochs": 0}, "x.yaml: train.epochs: Input should be greater than or equal to 1"),
        ({"epochs": True}, "x.yaml: train.epochs: expected a number, not the boolean true"),
        ({"steps": 790, "batch_size": 64, "eval_epochs": [5, 5]}, "train.eval_epochs: [5, 5] must be positive"),
        ({"steps": 790, "batch_size": 64, "eval_epochs": [5, 2]}, "strictly ascending"),
        ({"steps": 790, "batch_size": 64, "eval_epochs": [0, 2]}, "train.eval_epochs: [0, 2] must be positive"),
        (
            {"epochs": 10, "batch_size": 64, "eval_epochs": [10, 11]},
            "x.yaml: train.eval_epochs: epoch 11 ends at step 869, after the run's 790 steps (10 epochs of 79 steps)",
        ),
        (
            {"epochs": 10, "eval_every": 100, "eval_epochs": [5]},
            "x.yaml: train.eval_epochs: give train.eval_every or train.eval_epochs, not both",
        ),
    ],
)
def test_bad_epoch_settings_are_one_line_errors_naming_the_field(train, message):
    with pytest.raises(ConfigError) as err:
        build_config({"train": train}, "x.yaml")
    assert message in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize(
    "data,message",
    [
        ({"data": 5, "train": {"epochs": 2}}, "x.yaml: data: Input should be a valid dictionary"),
        ({"data": {"dataset": [1]}, "train": {"epochs": 2}}, "x.yaml: data.dataset: Input should be a valid string"),
        ({"train": {"epochs": 2, "lr": -1}}, "x.yaml: train.lr: Input should be greater than 0"),
    ],
)
def test_epochs_beside_another_bad_field_report_that_field(data, message):
    with pytest.raises(ConfigError) as err:
        build_config(data, "x.yaml")
    assert str(err.value).startswith(message)


def test_sections_given_as_objects_resolve_too():
    config = Config(train=TrainConfig(epochs=2, batch_size=64), data=DataConfig(dataset="mnist"))
    assert config.train.steps == 2 * 938


def test_an_override_that_contradicts_the_spec_names_the_override(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train: {steps: 300}\n")
    with pytest.raises(ConfigError, match=r"^--set train\.epochs: give train\.steps or train\.epochs, not both"):
        load_config(path, ["train.epochs=3"])


def test_dataset_sizes_are_the_loaded_training_splits():
    assert set(DATASET_SIZES) == set(DATASETS)
    assert len(load_dataset("mnist-5k")) == DATASET_SIZES["mnist-5k"]


class RecordingEvaluation:
    """Records the steps it is asked to evaluate at."""

    classifier_accuracy = None

    def __init__(self):
        self.steps = []

    def run(self, model, *, step, tracker):
        self.steps.append(step)
        return [EvalResult(step, SamplerSetting(), {"recognizability": 0.0})]


def _data(n: int):
    g = torch.Generator().manual_seed(0)
    return SimpleNamespace(
        images=torch.rand(n, 1, 28, 28, generator=g) * 2 - 1,
        labels=torch.arange(n) % 10,
        num_classes=10,
        channels=1,
        image_size=28,
        name="random",
        fingerprint="random",
    )


TINY = {
    "model": {"channels": 8, "channel_mult": [1, 2], "attention_resolutions": []},
    "train": {
        "epochs": 3,
        "eval_epochs": [1, 2],
        "batch_size": 8,
        "warmup_steps": 1,
        "device": "cpu",
        "precision": "fp32",
        "memory_format": "contiguous",
    },
}


def test_eval_epochs_evaluate_and_checkpoint_at_the_ends_of_those_epochs(tmp_path, monkeypatch):
    monkeypatch.setitem(DATASET_SIZES, "mnist-5k", 12)  # an epoch of 12 images: ceil(12 / 8) = 2 steps
    config = build_config(merge_train(checkpoint_every=100))  # no periodic checkpoint in 6 steps
    assert (config.train.steps, config.eval_epoch_steps()) == (6, (2, 4))
    saved = []
    save = checkpoint.save_atomic
    monkeypatch.setattr(checkpoint, "save_atomic", lambda state, path: (saved.append(state["step"]), save(state, path)))
    evaluator = RecordingEvaluation()
    result = train(config, MemoryTracker(), run_dir=tmp_path, data=_data(12), evaluator=evaluator, progress=False)
    assert evaluator.steps == [2, 4, 6] and saved == [2, 4, 6] and result.steps == 6
    assert [e.step for e in result.evals] == [2, 4, 6]
    assert Budget.of(config).sampling[config.eval.samplers[0].label][2] == 3  # the dry run counts them too


def test_epochs_of_a_data_set_of_another_size_are_refused(tmp_path, monkeypatch):
    monkeypatch.setitem(DATASET_SIZES, "mnist-5k", 12)
    config = build_config(merge_train())
    with pytest.raises(ConfigError, match="train.epochs: epochs of mnist-5k were counted as 12 images, but the data"):
        train(config, run_dir=tmp_path, data=_data(11), evaluator=RecordingEvaluation(), progress=False)
    assert not (tmp_path / "checkpoint.pt").exists()


def merge_train(**train):
    return {**TINY, "train": {**TINY["train"], **train}}


def test_the_exercise_resolves_to_the_epochs_it_names():
    spec = load_spec(EXERCISE)
    full = make_plan(spec, EXERCISE, "full").jobs[0].config
    assert (full.train.steps, full.steps_per_epoch(), full.eval_epoch_steps()) == (46_900, 469, (4_690, 23_450, 46_900))
    quick = make_plan(spec, EXERCISE, "quick").jobs[0].config
    assert (quick.train.epochs, quick.train.steps, quick.eval_epoch_steps()) == (20, 1_580, (158, 790, 1_580))
    assert (
        quick.model.conditional and quick.diffusion.schedule == "linear" and quick.diffusion.parameterization == "eps"
    )
    assert [s.guidance for s in quick.eval.samplers] == [0.0, 1.0, 3.0, 7.5, 15.0]
    default = make_plan(spec, EXERCISE).jobs[0].config
    assert (default.train.epochs, default.train.steps, default.eval_epoch_steps()) == (100, 7_900, (790, 3_950, 7_900))
