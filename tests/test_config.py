import pytest

from harness.config import Config, ConfigError, build_config, load_config


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
    with pytest.raises(Exception):
        c.train.steps = 5  # frozen


def test_flat_uses_dotted_keys():
    flat = Config().flat()
    assert flat["diffusion.schedule"] == "cosine" and flat["model.channel_mult"] == "[1, 2, 2]"
    assert "eval.samplers" in flat and "train.ema_decay" in flat


@pytest.mark.parametrize("data,message", [
    ({"model": {"chanels": 3}}, "x.yaml: model.chanels: unknown key; valid keys here: attention_resolutions, channel_mult"),
    ({"diffusion": {"schedule": "quad"}}, "diffusion.schedule: unknown schedule 'quad'; valid: cosine, linear"),
    ({"diffusion": {"parameterization": "score"}}, "valid: eps, v, x0"),
    ({"data": {"dataset": "imagenet"}}, "valid: cifar10, fashion-mnist, mnist, mnist-5k"),
    ({"eval": {"samplers": [{"sampler": "euler"}]}}, "eval.samplers.0.sampler: unknown sampler 'euler'"),
    ({"eval": {"samplers": [{"sampler": "ddim", "stepz": 3}]}}, "eval.samplers.0.stepz: unknown key; valid keys here: eta, guidance"),
    ({"eval": {"samplers": [{"steps": 2000}]}}, "eval.samplers.0.steps: 2000 is above diffusion.timesteps = 1000"),
    ({"eval": {"samplers": [{"guidance": 2}]}}, "eval.samplers.0.guidance: 2.0 needs model.conditional: true"),
    ({"train": {"batch_size": 0}}, "train.batch_size: Input should be greater than or equal to 1"),
    ({"diffusion": {"zero_terminal_snr": True}}, "zero_terminal_snr needs parameterization v or x0"),
    ({"eval": {"samplers": [{"sampler": "heun", "eta": 1}]}}, "eta applies to the ddim sampler only"),
])
def test_bad_configs_are_one_line_errors(data, message):
    with pytest.raises(ConfigError) as err:
        build_config(data, "x.yaml")
    assert message in str(err.value) and "\n" not in str(err.value)


def test_load_config_with_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  steps: 10\nmodel:\n  conditional: true\n")
    c = load_config(path, ["train.lr=3e-4", "eval.samplers=[{sampler: heun, steps: 5}]", "model.channel_mult=[1, 2]",
                                 "model.attention_resolutions=[14]"])
    assert c.train.steps == 10 and c.train.lr == 3e-4 and c.model.channel_mult == (1, 2)
    assert c.eval.samplers[0].sampler == "heun" and c.model.conditional


@pytest.mark.parametrize("text,message", [
    ("train: [1, 2", "malformed YAML"),
    ("- 1\n- 2\n", "expected a mapping of sections"),
])
def test_bad_files(tmp_path, text, message):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_config(path)
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.yaml")
