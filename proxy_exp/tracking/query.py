"""The read side of MLflow: runs as a pandas frame, one run's metric history, artifacts, a campaign's parent run.

analysis/ reads MLflow only through these functions (and tracking/ is the only package that imports mlflow).
"""
from __future__ import annotations

import os
from typing import Any
from urllib.parse import urlparse

from proxy_exp.tracking import keys


def _client(uri: str):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def check_store_exists(tracking_uri: str) -> None:
    """A ``sqlite:///`` URI to a missing file would silently create an empty store: refuse."""
    if not tracking_uri.startswith("sqlite:"):
        return
    path = urlparse(tracking_uri).path
    if tracking_uri.startswith("sqlite:////"):
        path = "/" + path.lstrip("/")
    elif tracking_uri.startswith("sqlite:///"):
        path = path[1:]
    if path and path != ":memory:" and not os.path.exists(path):
        raise FileNotFoundError(f"MLflow store {tracking_uri!r}: file {path!r} does not exist; check "
                                "tracking.uri / paths.root (the campaign's store is <paths.root>/mlflow.db)")


def experiment_id(uri: str, experiment: str) -> str:
    """The id of ``experiment`` at ``uri``; ValueError naming the experiments there when it does not exist."""
    client = _client(uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        known = [e.name for e in client.search_experiments()]
        raise ValueError(f"no MLflow experiment named {experiment!r} at {uri}; experiments there: {known} "
                         "(set tracking.experiment, or tracking.uri / paths.root to where the runs were logged)")
    return exp.experiment_id


def experiment_of(uri: str, run_id: str) -> str:
    """The name of the experiment ``run_id`` belongs to."""
    client = _client(uri)
    return client.get_experiment(client.get_run(run_id).info.experiment_id).name


def runs_frame(uri: str, experiment: str, filter_string: str = ""):
    """All active runs of ``experiment``, one row per run, as ``mlflow.search_runs`` gives them: columns
    ``run_id``, ``status``, ``start_time``, ..., ``metrics.*``, ``params.*``, ``tags.*``."""
    import mlflow

    if not uri:
        raise ValueError("runs_frame: the tracking URI is empty; pass the store's URI, e.g. "
                         "'sqlite:////abs/path/mlflow.db' or 'http://127.0.0.1:5000'")
    check_store_exists(uri)
    experiment_id(uri, experiment)
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)
    try:
        return mlflow.search_runs(experiment_names=[experiment], filter_string=filter_string, output_format="pandas")
    finally:
        mlflow.set_tracking_uri(previous)


def metric_history(uri: str, run_id: str, key: str) -> list[tuple[int, float]]:
    """``[(step, value), ...]`` of one metric of one run, in logged order."""
    return [(int(m.step), float(m.value)) for m in _client(uri).get_metric_history(run_id, key)]


def run_params(uri: str, run_id: str) -> dict[str, str]:
    """The params of one run."""
    return dict(_client(uri).get_run(run_id).data.params)


def latest_metrics(uri: str, run_id: str) -> dict[str, float]:
    """The latest value of every metric of a run."""
    return dict(_client(uri).get_run(run_id).data.metrics)


def download_artifact(uri: str, run_id: str, path: str) -> str | None:
    """A run's artifact downloaded to a local temporary path, or None when the run has no such artifact."""
    import mlflow

    try:
        return mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=path, tracking_uri=uri)
    except Exception:  # noqa: BLE001 (MLflow raises several types for a missing artifact)
        return None


def find_runs(uri: str, experiment: str, filter_string: str, max_results: int = 200) -> list[Any]:
    """Runs matching ``filter_string``, newest first (MLflow ``Run`` objects: ``.info.run_id``, ``.data``)."""
    return list(_client(uri).search_runs([experiment_id(uri, experiment)], filter_string=filter_string,
                                         order_by=["attributes.start_time DESC"], max_results=max_results))


def child_runs(uri: str, experiment: str, parent_run_id: str) -> list[Any]:
    """The child runs of ``parent_run_id`` (tag ``mlflow.parentRunId``), newest first."""
    return find_runs(uri, experiment, f"tags.`{keys.PARENT_RUN_ID}` = '{parent_run_id}'", max_results=10000)


def find_campaign_run(uri: str, experiment: str, name: str) -> str:
    """The latest parent run of the campaign called ``name``."""
    runs = find_runs(uri, experiment, keys.tag_filter(keys.KIND, "campaign") + " and "
                     + keys.tag_filter(keys.CAMPAIGN, name), max_results=1)
    if not runs:
        raise ValueError(f"no campaign named {name!r} in experiment {experiment!r} at {uri}")
    return runs[0].info.run_id
