"""A checkpoint belongs to one configuration (issue 29, item 1): a run resumes only a checkpoint whose stored
config hash and network are its own; another's is refused in one line naming both hashes, or moved aside (never
deleted) when forced; an unreadable one alone is moved aside and the run starts again at step 0; a retrain's
removal of a run dir removes what the path points to, or refuses."""

import os
from types import SimpleNamespace

import pytest
import torch
from fixtures import TINY_MODEL

from harness.config import build_config
from harness.training import checkpoint
from harness.training.train import NoEvaluation, claim_run_dir, train


def _tiny(**train_fields):
    """A 6-step fp32 CPU config of the tiny model (a checkpoint every 3 steps), and 64 random images in memory (no
    data set read), the same ones every call."""
    fields = {"steps": 6, "batch_size": 8, "checkpoint_every": 3, "device": "cpu", "precision": "fp32"}
    fields["memory_format"] = "contiguous"
    config = build_config({"model": TINY_MODEL, "train": {**fields, **train_fields}})
    images = torch.rand(64, 1, 28, 28, generator=torch.Generator().manual_seed(0)) * 2 - 1
    labels = torch.arange(64) % 10
    return config, SimpleNamespace(images=images, labels=labels, num_classes=10, channels=1, image_size=28)


def _train(config, data, run_dir, **kw):
    return train(config, None, run_dir=run_dir, data=data, evaluator=NoEvaluation(), progress=False, **kw)


def _weights(run_dir):
    return torch.load(run_dir / "checkpoint.pt", weights_only=True)["model"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Config A trained to its end in a run dir of its own, and the same run dir's bytes to restore between tests."""
    config, data = _tiny(lr=1e-3)
    run_dir = tmp_path_factory.mktemp("a")
    result = _train(config, data, run_dir)
    return SimpleNamespace(config=config, data=data, dir=run_dir, result=result, bytes=_bytes(run_dir))


def _bytes(run_dir):
    return {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file()}


def _copy(trained, dest):
    dest.mkdir(parents=True, exist_ok=True)
    for name, data in trained.bytes.items():
        (dest / name).write_bytes(data)
    return dest


def test_a_checkpoint_stores_its_config_hash(trained):
    state = torch.load(trained.dir / "checkpoint.pt", weights_only=True)
    assert state["config_hash"] == trained.config.train_hash() == checkpoint.stored_hash(state)
    del state["config_hash"]  # written before checkpoints stored it: derived from the stored config
    assert checkpoint.stored_hash(state) == trained.config.train_hash()


def test_another_configs_checkpoint_is_refused_in_one_line_naming_both_hashes(trained, tmp_path):
    other, _ = _tiny(lr=3e-4, warmup_steps=2)  # same architecture, another optimization: the case
    run_dir = _copy(trained, tmp_path / "run")
    with pytest.raises(checkpoint.ForeignCheckpoint) as err:
        _train(other, trained.data, run_dir)
    msg = str(err.value)
    assert "\n" not in msg and trained.config.train_hash() in msg and other.train_hash() in msg
    assert f"holds config {trained.config.train_hash()}, not this config {other.train_hash()}" in msg
    assert _bytes(run_dir) == trained.bytes  # nothing written, nothing moved
    with pytest.raises(checkpoint.ForeignCheckpoint):  # the pre-check a job makes before it opens a run
        claim_run_dir(other, run_dir)
    assert _bytes(run_dir) == trained.bytes


def test_forced_the_other_checkpoint_is_moved_aside_and_the_config_trains_from_step_0(trained, tmp_path, capsys):
    other, _ = _tiny(lr=3e-4, warmup_steps=2)
    run_dir = _copy(trained, tmp_path / "run")
    assert claim_run_dir(other, run_dir, force=True) is True
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("warning: checkpoint.pt holds config") and "moved aside to" in err
    (aside,) = (run_dir / checkpoint.ASIDE).iterdir()
    assert aside.name.endswith(f"-not-{other.train_hash()}") and _bytes(aside) == trained.bytes  # renamed, kept
    result = _train(other, trained.data, run_dir)
    fresh = _train(other, trained.data, tmp_path / "fresh")
    assert result.steps == 6 and result.final_loss == fresh.final_loss  # all 6 steps trained, as from scratch
    assert all(torch.equal(v, _weights(tmp_path / "fresh")[k]) for k, v in _weights(run_dir).items())


def test_another_architecture_under_the_same_hash_is_refused(trained, tmp_path):
    wider = build_config({"model": {**TINY_MODEL, "channels": 2 * TINY_MODEL["channels"]}})
    with torch.device("meta"):
        from harness.training.train import build_model, parameter_shapes

        shapes = parameter_shapes(build_model(wider, 1, 28, 10))
    run_dir = _copy(trained, tmp_path / "run")
    state = torch.load(run_dir / "checkpoint.pt", weights_only=True)
    why = checkpoint.foreign(state, trained.config.train_hash(), shapes)
    assert why.startswith(f"holds a network of another architecture than config {trained.config.train_hash()}")
    assert "in the checkpoint" in why and "in the config" in why
    with pytest.raises(checkpoint.ForeignCheckpoint, match="another architecture"):
        checkpoint.resume_state(run_dir, trained.config.train_hash(), shapes)


@pytest.mark.parametrize("content", [[1, 2, 3], {"step": 4, "model": {}}], ids=["a list", "a dict without keys"])
def test_a_readable_file_that_is_no_checkpoint_of_ours_is_refused(tmp_path, content):
    torch.save(content, tmp_path / "checkpoint.pt")
    with pytest.raises(checkpoint.ForeignCheckpoint, match="is not a checkpoint of this harness"):
        checkpoint.resume_state(tmp_path, "0" * 12, {})
    assert (tmp_path / "checkpoint.pt").exists()


class _Marker:
    """Unpickling this writes a file: the proof that a loader executed code from the file."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def _damage(run_dir, how, marker):
    """The only checkpoint made unreadable: ``how`` a crash or an attacker leaves it."""
    path = run_dir / "checkpoint.pt"
    if how == "truncated":  # a file system that lost the end of the first save
        path.write_bytes(path.read_bytes()[:300])
    elif how == "empty":
        path.write_bytes(b"")
    else:  # a crafted pickle in its place
        torch.save({"step": 3, "model": _Marker(marker)}, path)


@pytest.mark.parametrize("how", ["truncated", "empty", "crafted pickle"])
def test_an_unreadable_only_checkpoint_is_moved_aside_and_training_starts_again(trained, tmp_path, capsys, how):
    config, data = _tiny(lr=1e-3)
    run_dir = tmp_path / "run"
    assert _train(config, data, run_dir, stop_after=3) is None  # killed after the first checkpoint
    assert sorted(p.name for p in run_dir.iterdir()) == ["checkpoint.pt"]
    marker = tmp_path / "executed"
    _damage(run_dir, how, marker)
    damaged = (run_dir / "checkpoint.pt").read_bytes()
    capsys.readouterr()
    result = _train(config, data, run_dir)
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"warning: no readable checkpoint in {run_dir}"), err
    assert "training starts again at step 0" in err
    assert not marker.exists()  # never executed
    (aside,) = (run_dir / checkpoint.ASIDE).iterdir()
    assert aside.name.endswith("-unreadable") and (aside / "checkpoint.pt").read_bytes() == damaged
    assert result.steps == 6 and result.final_loss == trained.result.final_loss  # as if never interrupted


def test_removing_a_run_dir_for_a_retrain(tmp_path):
    real = tmp_path / "real"
    (real / "grids").mkdir(parents=True)
    (real / "checkpoint.pt").write_bytes(b"x")
    (real / "grids" / "g.png").write_bytes(b"x")
    link = tmp_path / "link"
    link.symlink_to(real, target_is_directory=True)
    checkpoint.remove_run_dir(link)  # what the link points to is emptied; the link stays where the user put it
    assert link.is_symlink() and real.is_dir() and list(real.iterdir()) == []

    (real / "checkpoint.pt").write_bytes(b"x")
    checkpoint.remove_run_dir(real)
    assert not real.exists()
    checkpoint.remove_run_dir(real)  # nothing there: nothing to remove

    with pytest.raises(checkpoint.CheckpointError, match=f"run dir {link} links to .*which is not a directory"):
        checkpoint.remove_run_dir(link)  # dangling: refused, not replaced by a directory elsewhere
    file = tmp_path / "file"
    file.write_text("x")
    with pytest.raises(checkpoint.CheckpointError, match=f"run dir {file} is not a directory"):
        checkpoint.remove_run_dir(file)
    assert file.read_text() == "x"


@pytest.mark.skipif(os.geteuid() == 0, reason="root removes files from read-only directories")
def test_a_run_dir_that_cannot_be_removed_is_one_line(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "checkpoint.pt").write_bytes(b"x")
    run_dir.chmod(0o500)
    try:
        with pytest.raises(checkpoint.CheckpointError, match="cannot remove it for a retrain"):
            checkpoint.remove_run_dir(run_dir)
    finally:
        run_dir.chmod(0o700)
