"""``precision: auto`` and ``memory_format: auto``: decided by a timed probe (faked here, so the decision and the
cache are checked against known timings; a real probe of a tiny model checks that it measures), resolved before
anything is hashed, and never trained unresolved."""

import functools
import json
import re

import pytest
import torch

from harness.config import ConfigError, build_config
from harness.training import autotune
from harness.training.train import NoEvaluation, train

CPU = torch.device("cpu")
FP32, FP32_CL, BF16, BF16_CL = (
    ("fp32", "contiguous"),
    ("fp32", "channels_last"),
    ("bf16", "contiguous"),
    ("bf16", "channels_last"),
)
ALL = [FP32, FP32_CL, BF16, BF16_CL]
TINY_MODEL = {"channels": 8, "channel_mult": [1, 2], "attention_resolutions": []}


@pytest.fixture(autouse=True)
def measuring(monkeypatch):
    monkeypatch.delenv(autotune.OFF, raising=False)  # conftest turns the probe off for every other test


def seconds(fp32=1.0, fp32_cl=1.0, bf16=1.0, bf16_cl=1.0):
    return {"fp32": fp32, "fp32+channels_last": fp32_cl, "bf16": bf16, "bf16+channels_last": bf16_cl}


@pytest.mark.parametrize(
    "timings, expected",
    [
        (seconds(), FP32),  # all equal: the plain default
        (seconds(bf16=0.94), BF16),  # 6% faster: beyond the 5% margin
        (seconds(bf16=0.97), FP32),  # 3% faster: within noise, and bf16 changes the numerics
        (seconds(fp32_cl=0.97), FP32_CL),  # the Xeon of issue 18: channels_last fp32 fastest
        (seconds(fp32_cl=0.99), FP32),  # 1%: below the layout margin
        (seconds(bf16=0.6, bf16_cl=0.7), BF16),  # the EPYC: bf16 fastest, channels_last hurts it
        (seconds(fp32=1.0, fp32_cl=0.9, bf16=0.88, bf16_cl=1.2), FP32_CL),  # bf16 beats fp32 but not fp32+cl by 5%
        (seconds(bf16=1.3, bf16_cl=1.6), FP32),  # bf16 emulated or slow
        # The hosts of the README's table, as speed-ups over the bare loop: the Xeon of issue 18, this EPYC.
        (seconds(fp32=1 / 0.93, fp32_cl=1 / 1.13, bf16=1 / 0.81, bf16_cl=1 / 0.62), FP32_CL),
        (seconds(fp32=1 / 1.00, fp32_cl=1 / 1.11, bf16=1 / 1.65, bf16_cl=1 / 1.18), BF16),
    ],
)
def test_auto_takes_the_fastest_candidate_beyond_its_margin(timings, expected):
    chosen = autotune.choose(timings, ALL)
    assert chosen == expected
    fastest = min(timings.values())
    assert timings[autotune.name(chosen)] <= fastest / (1 - autotune.BF16_MARGIN)  # within 5% of the fastest


def test_a_field_set_explicitly_is_kept_and_bf16_is_tried_only_where_native(monkeypatch):
    monkeypatch.setattr(autotune, "native_bf16", lambda device: False)
    assert autotune.candidates(build_config({}), CPU) == [FP32, FP32_CL]
    monkeypatch.setattr(autotune, "native_bf16", lambda device: True)
    assert autotune.candidates(build_config({}), CPU) == ALL
    assert autotune.candidates(build_config({"train": {"precision": "bf16"}}), CPU) == [BF16, BF16_CL]
    layout = build_config({"train": {"memory_format": "contiguous"}})
    assert autotune.candidates(layout, CPU) == [FP32, BF16]


class FakeProbe:
    """A probe whose rounds agree: the same ``timings`` in every one of ``autotune.ROUNDS``."""

    def __init__(self, timings):
        self.timings, self.calls = timings, 0

    def __call__(self, config, device, options):
        self.calls += 1
        per_round = {autotune.name(c): [self.timings[autotune.name(c)]] * autotune.ROUNDS for c in options}
        return autotune.agreement(per_round, options)


def test_resolve_measures_once_per_host_and_model_and_the_hash_names_what_ran(tmp_path, monkeypatch):
    monkeypatch.setattr(autotune, "native_bf16", lambda device: True)
    probe = FakeProbe(seconds(bf16=0.5))
    config = build_config({"model": TINY_MODEL})
    resolved, record = autotune.resolve(config, CPU, tmp_path, measure=probe)
    assert (resolved.train.precision, resolved.train.memory_format) == BF16 and probe.calls == 1
    assert record["choice"] == "bf16" and record["seconds"]["bf16"] == 0.5
    # bf16 chosen by auto is the model an explicit bf16 config trains: one hash, as it is one training.
    explicit = build_config({"model": TINY_MODEL, "train": {"precision": "bf16", "memory_format": "contiguous"}})
    assert resolved.train_hash() == explicit.train_hash() != config.train_hash()
    again, cached = autotune.resolve(config, CPU, tmp_path, measure=probe)
    assert again == resolved and probe.calls == 1 and cached["cached"]
    # Another batch size, or another kind of machine, is measured anew.
    autotune.resolve(build_config({"model": TINY_MODEL, "train": {"batch_size": 64}}), CPU, tmp_path, measure=probe)
    assert probe.calls == 2
    monkeypatch.setattr(autotune, "host_identity", lambda device: "Intel Xeon [avx512f avx512_bf16]")
    autotune.resolve(config, CPU, tmp_path, measure=probe)
    assert probe.calls == 3
    assert len(list(tmp_path.glob("*.json"))) == 3


def test_autotune_off_resolves_to_fp32_contiguous_without_measuring(tmp_path, monkeypatch):
    monkeypatch.setenv(autotune.OFF, "off")
    probe = FakeProbe(seconds(bf16=0.1))
    resolved, _ = autotune.resolve(build_config({}), CPU, tmp_path, measure=probe)
    assert (resolved.train.precision, resolved.train.memory_format) == FP32 and probe.calls == 0
    bf16, _ = autotune.resolve(build_config({"train": {"precision": "bf16"}}), CPU, tmp_path, measure=probe)
    assert (bf16.train.precision, bf16.train.memory_format) == BF16 and probe.calls == 0


@pytest.mark.parametrize(
    "damage",
    [
        b"{not json",  # a write cut short
        b"\xff\xfe\x00garbage",  # not text
        b"[]",  # JSON, not an entry
        b'{"key": {}, "seconds": {"fp32": -1.0}, "choice": "fp32"}',  # a negative time
        b'{"key": {}, "seconds": {"fp32": 1.0}, "choice": "bf16"}',  # a choice it did not time
        b'{"key": {"version": 0}, "seconds": {"fp32": 1.0}, "choice": "fp32"}',  # another probe's entry
    ],
)
def test_an_unreadable_or_misshapen_cache_entry_is_measured_again_with_one_warning(tmp_path, monkeypatch, damage):
    monkeypatch.setattr(autotune, "native_bf16", lambda device: False)
    probe = FakeProbe(seconds(fp32_cl=0.5))
    config = build_config({"model": TINY_MODEL})
    autotune.resolve(config, CPU, tmp_path, measure=probe)
    (entry,) = tmp_path.glob("*.json")
    entry.write_bytes(damage)
    with pytest.warns(UserWarning, match=rf"^measuring again: {re.escape(str(entry))}: ") as caught:
        resolved, _ = autotune.resolve(config, CPU, tmp_path, measure=probe)
    assert len(caught) == 1
    assert probe.calls == 2 and resolved.train.memory_format == "channels_last"
    assert json.loads(entry.read_text())["choice"] == "fp32+channels_last"


def test_explicit_precisions_and_layouts_hash_by_their_values():
    pins = {
        ("fp32", "contiguous"): "60091c69b4b4",
        ("bf16", "contiguous"): "e24ae43385d0",
        ("fp32", "channels_last"): "9af41302ad87",
    }
    for (precision, layout), pinned in pins.items():
        assert build_config({"train": {"precision": precision, "memory_format": layout}}).train_hash() == pinned


def test_the_old_channels_last_switch_is_an_unknown_key():
    with pytest.raises(ConfigError, match=r"^x.yaml: train.channels_last: unknown key") as err:
        build_config({"train": {"channels_last": True}}, "x.yaml")
    assert "\n" not in str(err.value)


def test_training_refuses_a_config_that_still_says_auto(tmp_path):
    with pytest.raises(ConfigError, match=r"^train.precision, train.memory_format: auto is resolved by"):
        train(build_config({}), run_dir=tmp_path, data=object(), evaluator=NoEvaluation(), progress=False)
    assert not any(tmp_path.iterdir())


def test_the_real_probe_times_every_candidate_on_the_real_model(tmp_path, monkeypatch):
    monkeypatch.setattr(autotune, "native_bf16", lambda device: True)  # bf16 autocast runs on any CPU, slowly or not
    config = build_config({"model": TINY_MODEL, "train": {"batch_size": 4}})
    timings = autotune.probe(config, CPU, ALL, rounds=1).seconds
    assert set(timings) == {autotune.name(c) for c in ALL} and all(0 < s < 5 for s in timings.values())
    latent = build_config({"model": TINY_MODEL, "train": {"batch_size": 4}, "data": {"space": "latent"}})
    assert latent.network_input() == (4, 7, 7)
    assert set(autotune.probe(latent, CPU, [FP32], rounds=1).seconds) == {"fp32"}


def test_the_probe_is_reported_in_one_line(tmp_path, monkeypatch):
    from harness.orchestration.placement import describe_record

    monkeypatch.setattr(autotune, "native_bf16", lambda device: False)
    monkeypatch.setattr(autotune, "host_identity", lambda device: "AMD EPYC [avx2 avx512f]")
    config = build_config({"model": TINY_MODEL, "train": {"batch_size": 16}})
    _, record = autotune.resolve(config, CPU, tmp_path, measure=FakeProbe(seconds(fp32=0.02, fp32_cl=0.01)))
    assert describe_record(record) == (
        "autotune (measured in 5 rounds, AMD EPYC [avx2 avx512f]): unet 1x28x28 batch 16: "
        "fp32+channels_last 10 ms, fp32 20 ms per step -> fp32+channels_last"
    )
    _, again = autotune.resolve(config, CPU, tmp_path)
    assert describe_record(again).startswith("autotune (cached, AMD EPYC")


# The probe against a machine whose load changes: a fake clock that each candidate's step advances by its
# true seconds times the load at that moment, so the right answer is known.
EPYC = seconds(fp32=1.0, fp32_cl=0.9, bf16=0.6, bf16_cl=0.7)  # bf16 the choice (tests above: this host)


class Machine:
    def __init__(self, true_seconds, load=lambda t, name, call: 1.0):
        self.true, self.load, self.now, self.calls = true_seconds, load, 0.0, dict.fromkeys(true_seconds, 0)

    def clock(self) -> float:
        return self.now

    def steps(self, options):
        def step(n):
            self.now += self.true[n] * self.load(self.now, n, self.calls[n])
            self.calls[n] += 1

        return {n: functools.partial(step, n) for n in map(autotune.name, options)}

    def measure(self, options, **kw):
        return autotune.measure_rounds(self.steps(options), options, self.clock, **kw)


def old_probe(found_per_round: dict[str, list[float]], options) -> tuple[str, str]:
    """Issue 30's probe: the fastest of two rounds per candidate."""
    return autotune.choose({n: min(ts[:2]) for n, ts in found_per_round.items()}, options)


def test_an_idle_machine_settles_in_the_first_rounds_on_the_true_times():
    found = Machine(EPYC).measure(ALL)
    assert found.settled and found.rounds == autotune.ROUNDS and found.seconds == pytest.approx(EPYC)
    assert autotune.choose(found.seconds, ALL) == BF16


@pytest.mark.parametrize("spiked", ["bf16", "bf16+channels_last", "fp32"])
@pytest.mark.parametrize("round_", [0, 2, 4])
def test_a_load_spike_during_one_candidates_steps_does_not_decide(spiked, round_):
    steps = 2  # the probe's timed steps per candidate and round on a CPU
    spike = lambda t, n, call: 4.0 if n == spiked and call // steps == round_ else 1.0  # noqa: E731
    found = Machine(EPYC, spike).measure(ALL, steps=steps)
    assert autotune.choose(found.seconds, ALL) == BF16 and found.seconds == pytest.approx(EPYC)
    # The spiked round strays: more rounds, until the window of the last ROUNDS is clean, then cached.
    assert found.settled
    assert found.rounds == (autotune.ROUNDS + round_ + 1 if spiked in ("bf16", "bf16+channels_last") else 5)


@pytest.mark.parametrize("busy_until", [3.0, 6.0, 9.0, 14.0, 20.0])
def test_a_neighbour_busy_for_the_first_seconds_does_not_decide_and_the_choice_is_cached(busy_until):
    """Issue 30's case: two CPU-bound processes during the probe's first seconds (about 3x slower steps)."""
    busy = lambda t, n, call: 3.0 if t < busy_until else 1.0  # noqa: E731
    machine = Machine(EPYC, busy)
    found = machine.measure(ALL)
    assert found.settled and autotune.choose(found.seconds, ALL) == BF16
    assert found.seconds == pytest.approx(EPYC)  # the window slid past the load


def test_the_old_probe_was_fooled_by_a_load_that_ended_during_it():
    # Busy while bf16 was timed in the first two rounds (A B C D, D C B A: bf16 sits in the middle of both).
    busy = lambda t, n, call: 3.0 if n.startswith("bf16") and call < 4 else 1.0  # noqa: E731
    first_two = {n: 3.0 * s if n.startswith("bf16") else s for n, s in EPYC.items()}  # what both rounds saw
    assert autotune.choose(first_two, ALL) == FP32_CL  # the old rule (fastest of 2 rounds): fooled
    found = Machine(EPYC, busy).measure(ALL)
    assert autotune.choose(found.seconds, ALL) == BF16 and found.settled


def test_a_noisy_probe_decides_for_its_plan_only_and_is_not_cached(tmp_path, monkeypatch):
    import random

    from harness.orchestration.placement import describe_record

    monkeypatch.setattr(autotune, "native_bf16", lambda device: True)
    rng = random.Random(0)
    noisy = lambda t, n, call: rng.uniform(1.0, 3.0)  # noqa: E731 - every step under another load
    calls = []

    def probe(config, device, options):
        calls.append(1)
        return Machine(EPYC, noisy).measure(options)

    config = build_config({"model": TINY_MODEL})
    session = {}
    resolved, record = autotune.resolve(config, CPU, tmp_path, measure=probe, session=session)
    assert record["settled"] is False and record["rounds"] == autotune.MAX_ROUNDS
    assert not list(tmp_path.glob("*.json"))  # nothing cached
    line = describe_record(record)
    assert f"noisy: {autotune.MAX_ROUNDS} rounds strayed" in line and "for this plan only, not cached" in line
    # The plan's other jobs of this model shape get the same choice without probing again ...
    again, _ = autotune.resolve(config, CPU, tmp_path, measure=probe, session=session)
    assert again == resolved and len(calls) == 1
    # ... and the next plan measures again.
    autotune.resolve(config, CPU, tmp_path, measure=probe)
    assert len(calls) == 2


def _rates(config, step_seconds, intervals=5):
    return [config.train.batch_size / step_seconds] * intervals


def test_a_run_far_from_its_prediction_marks_the_entry_stale_and_the_next_plan_measures_again(tmp_path, monkeypatch):
    from harness.orchestration.placement import describe_record

    monkeypatch.setattr(autotune, "native_bf16", lambda device: True)
    probe = FakeProbe(seconds(bf16=0.5))  # predicted: bf16 at 0.5 s per step
    config = build_config({"model": TINY_MODEL})
    resolved, _ = autotune.resolve(config, CPU, tmp_path, measure=probe)
    (entry,) = tmp_path.glob("*.json")
    # Within 25% either way, or too few intervals to tell: the entry stands.
    assert autotune.check_run(resolved, CPU, tmp_path, _rates(resolved, 0.6)) is None
    assert autotune.check_run(resolved, CPU, tmp_path, _rates(resolved, 0.41)) is None
    assert autotune.check_run(resolved, CPU, tmp_path, _rates(resolved, 5.0, intervals=2)) is None
    compiled = resolved.model_copy(update={"train": resolved.train.model_copy(update={"compile": True})})
    assert autotune.check_run(compiled, CPU, tmp_path, _rates(resolved, 5.0)) is None  # the probe does not compile
    assert "stale" not in json.loads(entry.read_text())
    # 0.7 s a step, 1.4x the prediction (the first interval, kernel selection, does not count: a median).
    rates = [1.0] + _rates(resolved, 0.7)
    line = autotune.check_run(resolved, CPU, tmp_path, rates)
    assert line == (
        f"autotune: run {resolved.train_hash()} stepped in 700 ms, the probe predicted 500 ms for bf16 (1.40x): "
        f"{entry.name} marked stale, the next plan measures again"
    )
    assert json.loads(entry.read_text())["stale"]["run"] == resolved.train_hash()
    assert autotune.check_run(resolved, CPU, tmp_path, rates) is None  # marked once
    # The next plan measures again, and says why; the new entry is not stale.
    probe.timings = seconds(fp32_cl=0.5)
    again, record = autotune.resolve(config, CPU, tmp_path, measure=probe)
    assert probe.calls == 2 and record["remeasured"] == "stale" and again.train.memory_format == "channels_last"
    assert "the cached entry was stale" in describe_record(record)
    assert "stale" not in json.loads(entry.read_text())
    # The plan after that reads the fresh entry: nothing about the earlier staleness.
    _, cached = autotune.resolve(config, CPU, tmp_path, measure=probe)
    assert probe.calls == 2 and cached["cached"] and "stale" not in describe_record(cached)
    # A run much faster than predicted (the probe ran under load) marks it too.
    assert autotune.check_run(again, CPU, tmp_path, _rates(again, 0.3)) is not None


def test_a_stale_entry_measured_again_keeps_a_choice_within_the_margin_so_finished_runs_keep_their_hashes(
    tmp_path, monkeypatch
):
    monkeypatch.setattr(autotune, "native_bf16", lambda device: True)
    probe = FakeProbe(seconds(bf16=0.5))
    config = build_config({"model": TINY_MODEL})
    first, _ = autotune.resolve(config, CPU, tmp_path, measure=probe)
    assert autotune.check_run(first, CPU, tmp_path, _rates(first, 0.9)) is not None  # marked stale
    probe.timings = seconds(bf16=0.52, fp32_cl=0.5)  # bf16 now 4% behind: within the 5% margin, kept
    again, record = autotune.resolve(config, CPU, tmp_path, measure=probe)
    assert again.train_hash() == first.train_hash() and record["kept"] and record["remeasured"] == "stale"
    assert autotune.check_run(again, CPU, tmp_path, _rates(again, 0.9)) is not None  # stale again
    probe.timings = seconds(bf16=0.6, fp32_cl=0.5)  # 20% behind: the new fastest wins
    third, record = autotune.resolve(config, CPU, tmp_path, measure=probe)
    assert third.train.precision == "fp32" and "kept" not in record


def test_the_dry_runs_estimate_entry_is_marked_stale_as_well(tmp_path, monkeypatch):
    config = build_config({"model": TINY_MODEL, "train": {"precision": "fp32", "memory_format": "contiguous"}})
    monkeypatch.setattr(autotune, "probe", lambda config, device, options, rounds: {"fp32": 0.2})
    assert autotune.step_seconds(config, CPU, tmp_path) == 0.2
    assert "marked stale" in autotune.check_run(config, CPU, tmp_path, _rates(config, 0.4))
    monkeypatch.setattr(autotune, "probe", lambda config, device, options, rounds: {"fp32": 0.4})
    assert autotune.step_seconds(config, CPU, tmp_path) == 0.4


def test_autotune_off_checks_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv(autotune.OFF, "off")
    config = build_config({"model": TINY_MODEL, "train": {"precision": "fp32", "memory_format": "contiguous"}})
    assert autotune.check_run(config, CPU, tmp_path, _rates(config, 100.0)) is None
    assert not any(tmp_path.iterdir())


def test_the_training_loop_reports_its_images_per_second_per_log_interval(tmp_path):
    from types import SimpleNamespace

    from harness.training.train import NoEvaluation

    train_fields = {"steps": 6, "log_every": 2, "checkpoint_every": 6, "batch_size": 2}
    train_fields |= {"precision": "fp32", "memory_format": "contiguous"}
    config = build_config({"model": TINY_MODEL, "train": train_fields})
    data = SimpleNamespace(
        images=torch.rand(8, 1, 28, 28) * 2 - 1,
        labels=torch.zeros(8, dtype=torch.long),
        channels=1,
        image_size=28,
        num_classes=10,
    )
    result = train(config, run_dir=tmp_path, data=data, evaluator=NoEvaluation(), progress=False)
    assert len(result.interval_rates) == 3 and all(r > 0 for r in result.interval_rates)
    # The run's mean rate is the steps' images over the intervals' summed time.
    seconds = sum(2 * 2 / r for r in result.interval_rates)
    assert result.images_per_second == pytest.approx(6 * 2 / seconds)
