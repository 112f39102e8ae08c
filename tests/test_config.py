import pytest
import torch
from pydantic import ValidationError

from harness.config import (
    IMAGE_CHANNELS,
    IMAGE_SIZES,
    MAX_EVAL_SAMPLES,
    NUM_CLASSES,
    Config,
    ConfigError,
    SamplerSetting,
    build_config,
    load_config,
)
from harness.config.yamlio import YamlError, load_text
from harness.models.unet import UNet, check_shape, resolutions


def test_defaults_and_hash_ignores_eval_and_operational_fields():
    base = Config()
    assert base.train_hash() == Config().train_hash() and len(base.train_hash()) == 12
    other_eval = build_config({"eval": {"samplers": [{"sampler": "heun", "steps": 10}], "num_samples": 50}})
    operational = build_config({"train": {"checkpoint_every": 7, "log_every": 3}, "data": {"root": "/tmp/x"}})
    assert other_eval.train_hash() == base.train_hash() == operational.train_hash()
    assert build_config({"diffusion": {"schedule": "linear"}}).train_hash() != base.train_hash()
    assert build_config({"train": {"seed": 1}}).train_hash() != base.train_hash()


def test_canonical_json_is_stable_and_frozen():
    c = Config()
    assert c.canonical_json() == Config.model_validate_json(c.model_dump_json()).canonical_json()
    with pytest.raises(ValidationError):
        c.train.steps = 5  # frozen


def test_flat_uses_dotted_keys():
    flat = Config().flat()
    assert flat["diffusion.schedule"] == "cosine" and flat["model.channel_mult"] == "[1, 2, 2]"
    assert "eval.samplers" in flat and "train.ema_decay" in flat


@pytest.mark.parametrize(
    "data,message",
    [
        (
            {"model": {"chanels": 3}},
            "x.yaml: model.chanels: unknown key; valid keys here: attention_resolutions, backbone, channel_mult",
        ),
        ({"diffusion": {"schedule": "quad"}}, "diffusion.schedule: unknown schedule 'quad'; valid: cosine, linear"),
        ({"diffusion": {"parameterization": "score"}}, "valid: eps, v, x0"),
        ({"data": {"dataset": "imagenet"}}, "valid: cifar10, fashion-mnist, mnist, mnist-5k"),
        ({"eval": {"samplers": [{"sampler": "plms"}]}}, "eval.samplers.0.sampler: unknown sampler 'plms'"),
        (
            {"eval": {"samplers": [{"sampler": "ddim", "stepz": 3}]}},
            "eval.samplers.0.stepz: unknown key; valid keys here: classifier_scale, eta, guidance",
        ),
        ({"eval": {"samplers": [{"steps": 2000}]}}, "eval.samplers.0.steps: 2000 is above diffusion.timesteps = 1000"),
        ({"eval": {"samplers": [{"guidance": 2}]}}, "eval.samplers.0.guidance: 2.0 needs model.conditional: true"),
        ({"train": {"batch_size": 0}}, "train.batch_size: Input should be greater than or equal to 1"),
        ({"diffusion": {"zero_terminal_snr": True}}, "zero_terminal_snr needs parameterization v or x0"),
        ({"eval": {"samplers": [{"sampler": "heun", "eta": 1}]}}, "eta applies to the ddim sampler only"),
    ],
)
def test_bad_configs_are_one_line_errors(data, message):
    with pytest.raises(ConfigError) as err:
        build_config(data, "x.yaml")
    assert message in str(err.value) and "\n" not in str(err.value)


def test_load_config_with_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  steps: 10\nmodel:\n  conditional: true\n")
    c = load_config(
        path,
        [
            "train.lr=3e-4",
            "eval.samplers=[{sampler: heun, steps: 5}]",
            "model.channel_mult=[1, 2]",
            "model.attention_resolutions=[14]",
        ],
    )
    assert c.train.steps == 10 and c.train.lr == 3e-4 and c.model.channel_mult == (1, 2)
    assert c.eval.samplers[0].sampler == "heun" and c.model.conditional


@pytest.mark.parametrize(
    "text,message",
    [
        ("train: [1, 2", "malformed YAML"),
        ("- 1\n- 2\n", "expected a mapping of sections"),
    ],
)
def test_bad_files(tmp_path, text, message):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_config(path)
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.yaml")


# -- bad values are refused where they are defined ---------------------------------------------------

SECTIONS = {name: f.annotation for name, f in Config.model_fields.items()}
FLOATS = [(s, n) for s, model in SECTIONS.items() for n, f in model.model_fields.items() if f.annotation is float]
NUMBERS = [
    (s, n) for s, model in SECTIONS.items() for n, f in model.model_fields.items() if f.annotation in (int, float)
]


@pytest.mark.parametrize("section,name", FLOATS, ids=[f"{s}.{n}" for s, n in FLOATS])
@pytest.mark.parametrize("value", [float("inf"), float("-inf"), float("nan")])
def test_every_float_field_refuses_non_finite_values(section, name, value):
    data = {section: {name: value}} if section != "eval" or name != "samplers" else {}
    with pytest.raises(ConfigError, match=f"{section}.{name}: Input should be a finite number"):
        build_config(data, "x.yaml")
    setting = [n for n, f in SamplerSetting.model_fields.items() if f.annotation is float]
    for n in setting:  # and so does every float of a sampler setting
        with pytest.raises(ConfigError, match=f"eval.samplers.0.{n}: Input should be a finite number"):
            build_config({"eval": {"samplers": [{n: value}]}})


@pytest.mark.parametrize("section,name", NUMBERS, ids=[f"{s}.{n}" for s, n in NUMBERS])
def test_every_number_field_refuses_a_boolean(section, name):
    with pytest.raises(ConfigError, match=f"{section}.{name}: expected a number, not the boolean true"):
        build_config({section: {name: True}}, "x.yaml")


def test_numbers_still_accept_strings_from_logged_params():
    """MLflow params come back as strings: rebuilding a setting from them must keep working."""
    s = SamplerSetting.from_params({"sampler": "ddim", "steps": "20", "eta": "0.5", "guidance": "0"})
    assert (s.steps, s.eta) == (20, 0.5)


@pytest.mark.parametrize(
    "data,message",
    [
        ({"train": {"seed": -1}}, "train.seed: Input should be greater than or equal to 0"),
        ({"train": {"seed": 2**63}}, "train.seed: Input should be less than or equal to 9223372036854775807"),
        ({"eval": {"seed": 2**63}}, "eval.seed: Input should be less than"),
        ({"train": {"batch_size": 2**64}}, "train.batch_size: Input should be less than"),
        (
            {"eval": {"num_samples": MAX_EVAL_SAMPLES + 1}},
            "eval.num_samples: Input should be less than or equal to 50000",
        ),
        ({"model": {"channels": 9}}, "model.channels: 9 is odd"),
        ({"model": {"channel_mult": [1, 0]}}, "model.channel_mult: [1, 0] needs at least one level"),
        ({"model": {"attention_resolutions": [14, 3]}}, "model.attention_resolutions: 3 is never reached"),
        (
            {"data": {"dataset": "cifar10"}, "model": {"attention_resolutions": [7]}},
            "model.attention_resolutions: 7 is never reached; with 32x32 images and 3 levels the model works at 32, 16, 8",
        ),
    ],
)
def test_limits_and_shapes(data, message):
    with pytest.raises(ConfigError) as err:
        build_config(data, "x.yaml")
    assert f"x.yaml: {message}" in str(err.value)
    assert build_config({"train": {"seed": 2**63 - 1}, "eval": {"num_samples": MAX_EVAL_SAMPLES}})


SHAPES = [  # (image size, channels, channel_mult, attention_resolutions)
    (28, 8, (1, 2), ()),
    (28, 16, (1, 2, 2), (7,)),
    (28, 24, (1, 2, 2), (14, 7)),
    (32, 16, (1, 2, 2, 2), (16, 4)),
    (28, 96, (1, 3), (14,)),
    (28, 16, (1,), ()),
    (28, 16, (1, 1, 1, 1, 1, 1), (1,)),
    (28, 9, (1, 2), ()),
    (28, 50, (1, 2, 2), (7,)),
    (28, 16, (0,), ()),
    (28, 16, (1, -2), ()),
    (28, 16, (), ()),
    (28, 40, (1, 2, 2), (7,)),
    (28, 48, (1, 3, 5), (14,)),
    (28, 80, (1, 2), (28,)),
]


@pytest.mark.parametrize("size,channels,mult,attention", SHAPES)
def test_check_shape_passes_exactly_the_shapes_the_unet_can_run(size, channels, mult, attention):
    """check_shape and the real U-Net agree. Two shapes that build are refused by design: attention at a
    resolution never reached (it does nothing) and no levels at all (no U, only the middle block)."""
    try:
        check_shape(size, channels, mult, attention)
        accepted = True
    except ValueError:
        accepted = False
    try:
        model = UNet(image_size=size, channels=channels, channel_mult=mult, attention_resolutions=attention)
        with torch.no_grad():
            model(torch.randn(1, 1, size, size), torch.tensor([3]))
        runs = bool(mult) and all(r in resolutions(size, len(mult)) for r in attention)
    except (RuntimeError, ValueError, IndexError):
        runs = False
    assert accepted == runs


def test_image_sizes_name_every_data_set():
    from harness.training.data import DATASETS, load_dataset

    assert set(IMAGE_SIZES) == set(DATASETS)
    assert set(IMAGE_CHANNELS) == set(NUM_CLASSES) == set(DATASETS)
    data = load_dataset("mnist-5k")
    assert (data.channels, data.image_size, data.num_classes) == (
        IMAGE_CHANNELS["mnist-5k"],
        IMAGE_SIZES["mnist-5k"],
        NUM_CLASSES["mnist-5k"],
    )


# -- YAML within limits ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text,message",
    [
        ("a: 1\na: 2\n", "duplicate key 'a' at line 2 (first at line 1)"),
        ("a:\n  - {x: 1, y: 2, x: 3}\n", "a.0: duplicate key 'x'"),
        ("a: !!str 1\n", "YAML tags such as '!!str' are not allowed"),
        ("a: ! 1\n", "YAML tags such as '!' are not allowed"),
        ("[" * 33 + "]" * 33, "nested more than 32 levels deep"),
        (
            "a: &a [[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]\nb: [[[[[[[[[[[[[[[[[*a]]]]]]]]]]]]]]]]]\n",
            "levels deep once aliases are expanded",
        ),
        (
            "a: &a [x, x, x, x, x, x, x, x, x, x]\n"
            + "".join(f"{c}: &{c} [{', '.join([f'*{p}'] * 10)}]\n" for p, c in zip("abcd", "bcde")),
            "more than 10,000 values",
        ),
        ("a: &a [1, *a]", "alias *a refers to a value that contains it"),
        ("a: 1\n---\nb: 2\n", "malformed YAML: but found another document"),
        ("a: \x07", "line 1, column 4: character U+0007 is not allowed in YAML"),
    ],
)
def test_yaml_refusals_are_one_line(text, message):
    with pytest.raises(YamlError) as err:
        load_text(text)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_yaml_keeps_what_specs_use():
    """Anchors, aliases and merge keys below the limits still work; a merge key may be overridden."""
    text = "base: &b {x: 1, y: [1, 2]}\nother:\n  <<: *b\n  y: 3\nlist: [*b, *b]\n"
    assert load_text(text) == {
        "base": {"x": 1, "y": [1, 2]},
        "other": {"x": 1, "y": 3},
        "list": [{"x": 1, "y": [1, 2]}] * 2,
    }


def test_config_errors_are_one_printable_line():
    err = ConfigError("x.yaml: a\nb: unknown key \x1b[31m" + "z" * 5000)
    assert "\n" not in str(err) and "\x1b" not in str(err) and "a\\nb" in str(err) and "\\x1b[31m" in str(err)
    assert len(str(err)) == ConfigError.MAX_CHARS and str(err).endswith("...")


# -- bounds where a value can only be a mistake (issue 29 item 4) -------------------------------------------


def test_num_samples_lower_bound_is_the_most_any_metric_needs():
    from harness.config.schema import METRICS, MIN_EVAL_SAMPLES, PRC_NEIGHBORHOOD

    # precision/recall's k-NN radius needs k others (Kynkaanniemi et al. 2019): k + 1 samples, and no metric more
    assert MIN_EVAL_SAMPLES == PRC_NEIGHBORHOOD + 1 == max(m.min_samples for m in METRICS.values())
    assert build_config({"eval": {"num_samples": MIN_EVAL_SAMPLES}}).eval.num_samples == MIN_EVAL_SAMPLES
    with pytest.raises(ConfigError, match=r"x.yaml: eval.num_samples: 3 is too few: precision and recall need at le"):
        build_config({"eval": {"num_samples": MIN_EVAL_SAMPLES - 1}}, "x.yaml")


def test_num_samples_bound_is_what_the_metrics_accept(tmp_path):
    """The bound is tight: the fidelity metrics run on MIN_EVAL_SAMPLES images and refuse one fewer."""
    from harness.config.schema import MIN_EVAL_SAMPLES
    from harness.evaluation.features import DomainClassifier, DomainCNN
    from harness.evaluation.metrics import fidelity_metrics

    g = torch.Generator().manual_seed(0)
    clf = DomainClassifier(DomainCNN(1, 28, 28, 10).eval(), 0.1, "untrained", False)  # any feature space will do
    ref = torch.rand(16, 1, 28, 28, generator=g) * 2 - 1
    gen = torch.rand(MIN_EVAL_SAMPLES, 1, 28, 28, generator=g) * 2 - 1
    out = fidelity_metrics(gen, ref, clf, cache_dir=tmp_path, reference_key="r")
    assert out["num_generated"] == MIN_EVAL_SAMPLES and out["fid"] >= 0 and 0 <= out["precision"] <= 1
    with pytest.raises(ValueError, match=f"at least {MIN_EVAL_SAMPLES}"):
        fidelity_metrics(gen[:-1], ref, clf, cache_dir=tmp_path, reference_key="r")


@pytest.mark.parametrize(
    "section,field,value",
    [
        ("diffusion", "timesteps", 100_001),
        ("train", "batch_size", 2**16 + 1),
        ("eval", "batch_size", 2**40),
        ("autoencoder", "batch_size", 2**20),
        ("model", "channels", 2**14 + 8),
        ("model", "hidden", 10**9),
        ("model", "depth", 2**11),
        ("model", "num_res_blocks", 5000),
        ("train", "log_every", 10**12),
    ],
)
def test_sizes_that_can_only_be_mistakes_are_one_line(section, field, value):
    with pytest.raises(ConfigError, match=rf"^c.yaml: {section}.{field}: Input should be less than or equal to"):
        build_config({section: {field: value}}, "c.yaml")


@pytest.mark.parametrize("name", ["cdua", "cuda:-1", "meta", "gpu", " cpu", "cuda:0:1", "", "cuda:x"])
def test_device_names_torch_cannot_read_are_one_line(name):
    with pytest.raises(ConfigError, match=r"^c.yaml: train.device: unknown device .*; valid: auto, cpu, cuda"):
        build_config({"train": {"device": name}}, "c.yaml")


@pytest.mark.parametrize("name", ["auto", "cpu", "cuda", "cuda:7", "mps", "cpu:0"])
def test_device_names_are_valid_anywhere_whether_or_not_present(name):
    # A Slurm node may have the GPU a login node lacks: existence is resolve_device's check, where the run is.
    assert build_config({"train": {"device": name}}).train.device == name


def test_a_device_this_machine_lacks_is_one_line_naming_the_field(monkeypatch):
    from harness.device import resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    with pytest.raises(ConfigError, match=r"^train.device: 'cuda:7' but torch sees no CUDA GPU here"):
        resolve_device("cuda:7")
    assert resolve_device("auto").type == "cpu" and resolve_device("cpu") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(ConfigError, match=r"'cuda:7' but this machine has 2 GPU\(s\), cuda:0 to cuda:1"):
        resolve_device("cuda:7")
    assert resolve_device("cuda:1") == torch.device("cuda:1")
    with pytest.raises(ConfigError, match=r"^HARNESS_DEVICE: unknown device 'cdua'"):
        resolve_device("cdua", "HARNESS_DEVICE")
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    with pytest.raises(ConfigError, match="MPS is not available"):
        resolve_device("mps")
