"""Each sampler declares the options of a sampler setting it reads (diffusion/samplers.py SAMPLERS,
diffusion/flow.py FLOW_SAMPLERS); a setting may move exactly those away from their defaults."""

from __future__ import annotations

import pytest

from harness.config import ConfigError, SamplerSetting, build_config
from harness.config.spec import Evaluate
from harness.diffusion.processes import PROCESS_SAMPLERS

# A value away from the default for every option of a sampler setting.
AWAY = {"steps": 7, "eta": 0.5, "guidance": 1.0, "spacing": "leading", "variance": "fixed_large", "time_shift": 3.0}
AWAY["classifier_scale"] = 2.0
CASES = [(p, s, o) for p, samplers in PROCESS_SAMPLERS.items() for s in samplers for o in AWAY]


def test_every_option_has_a_value_away_from_its_default():
    assert set(AWAY) == set(SamplerSetting.model_fields) - {"sampler"}
    assert all(AWAY[o] != SamplerSetting.model_fields[o].default for o in AWAY)


@pytest.mark.parametrize("process,sampler,option", CASES)
def test_an_option_is_accepted_iff_the_sampler_declares_it(process, sampler, option):
    data = {
        "diffusion": {"process": process},
        "model": {"conditional": True},
        "eval": {"samplers": [{"sampler": sampler, option: AWAY[option]}]},
    }
    if option in PROCESS_SAMPLERS[process][sampler].reads:
        assert getattr(build_config(data).eval.samplers[0], option) == AWAY[option]
        return
    with pytest.raises(ConfigError, match=rf"eval\.samplers\.0(\.{option})?: ") as err:
        build_config(data, "c.yaml")
    assert option in str(err.value) and "\n" not in str(err.value)


def test_the_declarations_name_only_setting_fields():
    fields = set(SamplerSetting.model_fields)
    assert all(s.reads <= fields for samplers in PROCESS_SAMPLERS.values() for s in samplers.values())


@pytest.mark.parametrize(
    "setting,series",
    [
        ({}, "ddim eta=0"),
        ({"sampler": "ddim", "eta": 1.0, "steps": 10}, "ddim eta=1"),
        ({"sampler": "ddpm", "variance": "fixed_large"}, "ddpm variance=fixed_large"),
        ({"sampler": "euler", "time_shift": 3.0}, "euler 3"),
    ],
)
def test_the_series_names_the_options_only_its_sampler_reads(setting, series):
    assert SamplerSetting(**setting).series == series


def test_the_spec_grid_drops_options_a_sampler_never_reads():
    grid = Evaluate(sampler=["ddim", "ddpm"], eta=[0.0, 1.0], variance=["fixed_small", "fixed_large"])
    got = {(s["sampler"], s["eta"], s["variance"]) for _, s in grid.expand()}
    assert got == {("ddim", 0.0, "fixed_small"), ("ddim", 1.0, "fixed_small"), ("ddpm", 0.0, "fixed_small")} | {
        ("ddpm", 0.0, "fixed_large")
    }
