"""The real MLflow UI on a smoke ablation: ``mlflow server`` on loopback, the arms view in headless Chromium.

Also makes the README's screenshot: ``HARNESS_UI_SCREENSHOT=docs/mlflow-ui.png pytest -m slow
tests/test_mlflow_ui.py`` writes the chart view there (else into the test's temporary directory).
"""

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from fixtures import mlflow_server
from test_mlflow_native import TINY

from harness.config import SamplerSetting
from harness.config.schema import ARMS_VIEW, ROLE, SHARED_VIEW, eval_key
from harness.config.spec import load_spec, make_plan
from harness.evaluation.evaluate import grid_key
from harness.orchestration.mlflow_ui import arms_view_url, run_url
from harness.orchestration.runner import run_plan
from harness.orchestration.tracking import MlflowStore

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(CHROMIUM is None, reason="no Chromium to render the UI (.ci/run installs it)"),
]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A smoke ablation (two schedules x two seeds) in a SQLite store, served by ``mlflow server``."""
    tmp = tmp_path_factory.mktemp("ui")
    spec = {
        "name": "ablation-schedules",
        "question": "Which noise schedule gives lower FID?",
        "base": {"data": {"dataset": "mnist-5k"}},
        "axes": {"grid": {"diffusion.schedule": ["linear", "cosine"]}},
        "seeds": [0, 1],
        "evaluate": {"sampler": ["ddim"], "steps": [3]},
        "profiles": {"smoke": {"set": TINY}},
    }
    path = tmp / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    store = MlflowStore(uri)
    outcomes, _ = run_plan(make_plan(load_spec(path), str(path), "smoke"), store, spec_path=str(path), quiet=True)
    assert all(o.status == "trained" for o in outcomes), [o.error for o in outcomes]
    experiment_id = store.client.get_experiment_by_name("ablation-schedules").experiment_id

    with mlflow_server(tmp / "server", uri) as url:
        yield url, experiment_id, store


def _chromium(
    tmp_path, url: str, *args: str, budget_ms: int = 25000, size: str = "1600,900"
) -> subprocess.CompletedProcess:
    # --virtual-time-budget lets the page's requests and rendering finish before the DOM or pixels are
    # taken; its own profile directory keeps the UI's saved state (localStorage) out of the test.
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", f"--window-size={size}"]
    cmd += [f"--user-data-dir={tmp_path / 'profile'}", f"--virtual-time-budget={budget_ms}", *args, url]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=180)


def _dom_showing(tmp_path, url: str, needle: str, budget_ms: int, size: str = "1600,900") -> str:
    """The page's DOM from the first of three renders, each with twice the last's budget, that shows ``needle``.

    On a loaded 2-core CI host the lazily loaded charts once missed a 60 s budget (the same page renders in
    seconds when idle); a page that never shows the needle still fails, with the last DOM.
    """
    for attempt in range(3):
        folder = tmp_path / f"try{attempt}"
        folder.mkdir()
        dom = _chromium(folder, url, "--dump-dom", budget_ms=budget_ms * 2**attempt, size=size).stdout
        if needle in dom:
            break
    return dom


def test_the_arms_view_shows_both_arms_grouped(server, tmp_path):
    url, experiment_id, store = server
    assert SHARED_VIEW + ARMS_VIEW in store.client.get_experiment(experiment_id).tags
    dom = _dom_showing(tmp_path, arms_view_url(url, experiment_id), "Group by: diffusion.schedule", budget_ms=25000)
    for schedule in ("linear", "cosine"):
        for seed in (0, 1):
            assert f"diffusion.schedule={schedule} seed={seed}" in dom
        assert f"Group: {schedule}" in dom  # grouped by the arm's parameter, not nested under the parent
    assert "Group by: diffusion.schedule" in dom and "Model training" in dom
    assert "mnist-5k" in dom  # the dataset input, in the runs table's Dataset column
    label = SamplerSetting(steps=3).label
    for metric in ("fid", "kid"):  # the first setting's final metrics are columns (the rest scroll in)
        assert f'col-id="metrics.`{eval_key(label, metric)}`"' in dom
    # The launch's parent run is not fetched into the view: no "Additional runs" group, no "Unassigned".
    assert "ablation-schedules-smoke" not in dom and "Additional runs" not in dom and "Unassigned" not in dom


def test_a_run_link_opens_in_model_training_mode_with_its_sample_grids(server, tmp_path):
    url, experiment_id, store = server
    for mode in ("ml", "genai", "charts"):
        (tmp_path / mode).mkdir()
    run = store.runs(experiment_id, {ROLE: "train"})[0]
    link = run_url(url, experiment_id, run.info.run_id)
    # The sidebar lists the model registry only in Model training mode; the same page in GenAI mode is the control,
    # read once it shows the run's name (so a page that had not rendered yet cannot pass).
    assert "Model registry" in _dom_showing(tmp_path / "ml", link, "Model registry", budget_ms=25000)
    genai = link.replace("workflowType=machine_learning", "workflowType=genai")
    dom = _dom_showing(tmp_path / "genai", genai, run.info.run_name, budget_ms=25000)
    assert run.info.run_name in dom and "Model registry" not in dom
    charts = link.replace(f"/runs/{run.info.run_id}?", f"/runs/{run.info.run_id}/model-metrics?")
    # Charts render as they scroll into view: a tall window renders them all, the image chart last.
    key = grid_key(SamplerSetting(steps=3).label)  # the image chart of the setting's sample grids
    assert key in _dom_showing(tmp_path / "charts", charts, key, budget_ms=60000, size="1600,8000")


def test_screenshot_of_the_chart_view(server, tmp_path):
    url, experiment_id, _ = server
    out = Path(os.environ.get("HARNESS_UI_SCREENSHOT") or tmp_path / "mlflow-ui.png").resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    out.unlink(missing_ok=True)
    # The charts load their plotting library lazily: 25 s of virtual time left them spinning here.
    proc = _chromium(tmp_path, arms_view_url(url, experiment_id, charts=True), f"--screenshot={out}", budget_ms=90000)
    assert out.exists(), proc.stderr[-2000:]
    from PIL import Image

    with Image.open(out) as image:
        assert image.size == (1600, 900)
        assert len(image.convert("L").getcolors(256)) > 50  # a rendered page, not a blank one
