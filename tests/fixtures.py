"""What tests share: the tiny configuration (the shipped smoke profile's), a smoke spec on disk, and a shipped
spec to copy."""

from pathlib import Path

import yaml

from harness.config.spec import with_shared_profiles

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"

# The tiny model every smoke run trains (experiments/profiles/smoke.yaml: 4 steps, evaluated at steps 2 and 4 on
# 16 samples), on the CPU: the dotted overrides of a spec's profile, and the model section of a config.
TINY = {**yaml.safe_load((EXPERIMENTS / "profiles" / "smoke.yaml").read_text())["set"], "train.device": "cpu"}
TINY_MODEL = {k.removeprefix("model."): v for k, v in TINY.items() if k.startswith("model.")}


def write_spec(tmp_path: Path, name: str = "tiny", smoke: dict | None = None, **fields) -> Path:
    """``tmp_path/<name>.yaml``: two arms (linear and cosine schedules) x seed 0 on mnist-5k, evaluated with DDIM-3,
    whose smoke profile trains the tiny model (``smoke``: more of its overrides); ``fields`` replace the spec's."""
    spec = {
        "name": name,
        "question": "Does it run?",
        "base": {"data": {"dataset": "mnist-5k"}},
        "axes": {"grid": {"diffusion.schedule": ["linear", "cosine"]}},
        "seeds": [0],
        "evaluate": {"sampler": ["ddim"], "steps": [3]},
        "profiles": {"smoke": {"set": {**TINY, **(smoke or {})}}},
        **fields,
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def shipped_spec(file: str) -> dict:
    """A shipped spec's data with the shared profiles it gets (``experiments/profiles/``): what to copy elsewhere."""
    return with_shared_profiles(yaml.safe_load((EXPERIMENTS / file).read_text()), EXPERIMENTS / file)
