"""What the MLflow UI opens: links in its Model training mode, and the saved view that compares arms.

Plain strings and JSON, no mlflow import: ``tracking.py`` writes the view onto the experiment, and whoever
prints a link builds it here. The query parameters and view-state keys are MLflow 3.17's own (its frontend:
``workflowType`` read by the workflow-type context, the keys its "share view" button writes).
"""

from __future__ import annotations

from typing import Any

from ..config.schema import ARMS_VIEW, ROLE, eval_key

# MLflow 3 chooses between its GenAI pages and its model-training pages per browser (a switch stored in
# localStorage, GenAI by default); the URL's ``workflowType`` overrides it, whatever the experiment's
# ``mlflow.experimentKind`` tag says. Every link the harness prints carries it.
MODEL_TRAINING = "workflowType=machine_learning"
LOCAL_UI = "http://127.0.0.1:5000"  # what `make ui` serves the default store on

# The view's columns: the first evaluation setting's final value of each metric every evaluation logs
# (class accuracies exist only with labels or classifier guidance, so they are not columns).
VIEW_METRICS = ("fid", "kid", "precision", "recall", "recognizability")
# The runs table's own columns that stay (MLflow's default also shows Source and Models, empty here).
VIEW_ATTRIBUTES = ("Dataset",)
# Sorting by run name (arm, then seed) is also what keeps the launch's parent run out of the view: sorted
# by start time (MLflow's default), the page fetches the parents of the listed runs and shows this one
# as an "Additional runs" group ("Unassigned" in the charts' legend), since it has no arm parameters.
BY_RUN_NAME = "tags.`mlflow.runName`"
NOTE = "mlflow.note.content"  # a run's description, shown at the top of its page (markdown)


def ui_server(tracking_uri: str) -> str:
    """The UI's address for a store: a tracking server is its own UI; a local store is what `make ui` serves."""
    return tracking_uri.rstrip("/") if tracking_uri.startswith(("http://", "https://")) else LOCAL_UI


def experiment_url(server: str, experiment_id: str, query: str = "") -> str:
    """The runs page of an experiment, in Model training mode (``query``: more ``key=value&...``)."""
    more = f"&{query}" if query else ""
    return f"{server.rstrip('/')}/#/experiments/{experiment_id}/runs?{MODEL_TRAINING}{more}"


def run_url(server: str, experiment_id: str, run_id: str) -> str:
    """A run's own page (its metrics, params, sample grids), in Model training mode."""
    return f"{server.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}?{MODEL_TRAINING}"


def arms_view_url(server: str, experiment_id: str, charts: bool = False) -> str:
    """The runs page opened on the view that compares the arms (``arms_view``); ``charts``: its chart tab."""
    mode = "&compareRunsMode=CHART" if charts else ""
    return experiment_url(server, experiment_id, f"viewStateShareKey={ARMS_VIEW}{mode}")


def launch_note(url: str) -> str:
    """The description of a launch's parent run: what it is, so that it is not taken for a result."""
    return (
        "The launch of this ablation: its spec, plan (`plan.json`) and outcomes (`outcomes.json`); it trained "
        f"nothing itself. Its training runs are compared, grouped by arm, in the [arms view]({url})."
    )


def arms_view(axes: list[str], label: str | None) -> dict[str, Any]:
    """The runs page's state that compares arms: training runs only, sorted by name, grouped by the axes,
    with the final metrics of the setting ``label`` (the spec's first) as columns.

    MLflow nests training runs under their collapsed parent and cannot group by a parameter across that
    nesting; the filter to role ``train`` and "Group by" the axes make each arm one group, and its charts
    show the mean and spread over seeds.
    """
    columns = [f"attributes.`{a}`" for a in VIEW_ATTRIBUTES]
    if label is not None:
        columns += [f"metrics.`{eval_key(label, m)}`" for m in VIEW_METRICS]
    return {
        "searchFilter": f"tags.`{ROLE}` = 'train'",
        "orderByKey": BY_RUN_NAME,
        "orderByAsc": True,
        "selectedColumns": columns,
        "groupBy": {
            "aggregateFunction": "average",
            "groupByKeys": [{"mode": "param", "groupByData": axis} for axis in axes],
        }
        if axes
        else None,
    }
