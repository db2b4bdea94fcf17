"""The read side of MLflow: runs as a pandas frame, one run's metric history, artifacts, a campaign's parent run.

analysis/ reads MLflow only through these functions (and tracking/ is the only package that imports mlflow).
Searches page through every match (:data:`PAGE_SIZE` runs a request, MLflow's ``page_token``): no result is dropped
by a cap. One ``MlflowClient`` per tracking URI and process (:func:`_client`). Reads that may be long (a campaign's
runs through a server) run under ``tracking.analysis_timeout_s`` (:func:`configure_reads`), not a job's
``tracking.http_timeout_s``.
"""
from __future__ import annotations

import contextlib
import functools
import itertools
import json
import os
import shutil
import tempfile
from typing import Any, Iterator, Sequence
from urllib.parse import urlparse

from proxy_exp.config import TrackingConfig
from proxy_exp.tracking import keys
from proxy_exp.tracking.run import configure

PAGE_SIZE = 500  # runs per search request: a page of a campaign's runs (~1,700 metrics each) answers in seconds
RUN_COLUMNS = ("run_id", "experiment_id", "status", "artifact_uri", "start_time", "end_time")  # mlflow.search_runs's


@functools.cache
def _client(uri: str):
    """The process's one ``MlflowClient`` of ``uri`` (its HTTP timeout is read from the environment at each request,
    so :func:`configure_reads` applies to it as well)."""
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def configure_reads(cfg: TrackingConfig, root: str) -> str:
    """:func:`proxy_exp.tracking.run.configure` for the read side: MLflow's HTTP timeout is
    ``tracking.analysis_timeout_s`` (a campaign's search through a server takes longer than a job's
    ``http_timeout_s`` allows); returns the URI. A :class:`~proxy_exp.tracking.run.Run` opened afterwards sets the
    job's timeout again."""
    return configure(cfg, root, timeout_s=cfg.analysis_timeout_s)


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


def iter_runs(uri: str, experiment: str, filter_string: str | Sequence[str] = "", order_by: list[str] | None = None,
              page_size: int = PAGE_SIZE) -> Iterator[Any]:
    """Every active run of ``experiment`` matching ``filter_string`` (MLflow ``Run`` objects), page by page: a page is
    requested only when the caller gets that far (``itertools.islice`` it for the first few). A list of filters gives
    the runs that match any of them (MLflow's filters have no OR), each once, filter after filter."""
    client, exp_id, seen = _client(uri), experiment_id(uri, experiment), set()
    for one in [filter_string] if isinstance(filter_string, str) else filter_string:
        token = None
        while True:
            page = client.search_runs([exp_id], filter_string=one, max_results=page_size, order_by=order_by,
                                      page_token=token)
            for run in page:
                if run.info.run_id not in seen:
                    seen.add(run.info.run_id)
                    yield run
            token = page.token
            if not token:
                break


def _frame(runs: list[Any]):
    """Runs laid out as ``mlflow.search_runs(output_format="pandas")`` lays them out: :data:`RUN_COLUMNS`
    (times as UTC timestamps), then ``metrics.*``, ``params.*`` and ``tags.*`` (missing where a run lacks one)."""
    import pandas as pd

    info = pd.DataFrame([[getattr(r.info, c) for c in RUN_COLUMNS] for r in runs], columns=list(RUN_COLUMNS))
    for column in ("start_time", "end_time"):
        info[column] = pd.to_datetime(info[column], unit="ms", utc=True)
    parts = [pd.DataFrame([getattr(r.data, what) for r in runs], index=info.index).add_prefix(what + ".")
             for what in ("metrics", "params", "tags")]
    return pd.concat([info, *parts], axis=1)


def runs_frame(uri: str, experiment: str, filter_string: str | Sequence[str] = "", page_size: int = PAGE_SIZE):
    """Every active run of ``experiment`` matching ``filter_string`` (all pages; a list: any of the filters,
    :func:`iter_runs`), one row per run, as
    ``mlflow.search_runs`` gives them: columns ``run_id``, ``status``, ``start_time``, ..., ``metrics.*``,
    ``params.*``, ``tags.*``. Filter on a campaign (``keys.tag_filter(keys.CAMPAIGN, name)``) rather than read a
    whole experiment: each run carries its ~1,700 metrics."""
    if not uri:
        raise ValueError("runs_frame: the tracking URI is empty; pass the store's URI, e.g. "
                         "'sqlite:////abs/path/mlflow.db' or 'http://127.0.0.1:5000'")
    check_store_exists(uri)
    return _frame(list(iter_runs(uri, experiment, filter_string, page_size=page_size)))


def metric_history(uri: str, run_id: str, key: str) -> list[tuple[int, float]]:
    """``[(step, value), ...]`` of one metric of one run, in logged order."""
    return [(int(m.step), float(m.value)) for m in _client(uri).get_metric_history(run_id, key)]


def run_params(uri: str, run_id: str) -> dict[str, str]:
    """The params of one run."""
    return dict(_client(uri).get_run(run_id).data.params)


def run_tags(uri: str, run_id: str) -> dict[str, str]:
    """The tags of one run."""
    return dict(_client(uri).get_run(run_id).data.tags)


def latest_metrics(uri: str, run_id: str) -> dict[str, float]:
    """The latest value of every metric of a run."""
    return dict(_client(uri).get_run(run_id).data.metrics)


ARTIFACT_READERS = 8  # parallel downloads of one artifact per run (:func:`parquet_artifacts`; I/O bound)


@contextlib.contextmanager
def downloaded_artifact(uri: str, run_id: str, path: str, artifact_uri: str = "") -> Iterator[str | None]:
    """A run's artifact downloaded to a temporary local path for the ``with`` block (removed after it), or None
    when the run has no such artifact. Any other failure (store unreachable, permissions, a timeout) raises.
    ``artifact_uri``: the run's artifact root as a search gave it (``info.artifact_uri``), which saves the store
    reading the whole run (its ~1,700 metrics) to find it."""
    dst = tempfile.mkdtemp(prefix="proxy-exp-artifact-")
    try:
        try:
            if artifact_uri:
                from mlflow.artifacts import download_artifacts

                local = download_artifacts(artifact_uri=artifact_uri.rstrip("/") + "/" + path, dst_path=dst,
                                           tracking_uri=uri)
            else:
                local = _client(uri).download_artifacts(run_id, path, dst)
        except Exception:  # noqa: BLE001 (MLflow raises several types for a missing artifact: tell it apart below)
            if _has_artifact(uri, run_id, path):
                raise
            local = None
        yield local
    finally:
        shutil.rmtree(dst, ignore_errors=True)


def _has_artifact(uri: str, run_id: str, path: str) -> bool:
    """Whether ``path`` is among the run's artifacts (one listing of its folder; asked only after a failed
    download, so a missing artifact costs one call and a real error is not taken for one)."""
    folder = os.path.dirname(path)
    return any(f.path == path for f in _client(uri).list_artifacts(run_id, folder or None))


def json_artifact(uri: str, run_id: str, path: str):
    """A run's JSON artifact, parsed, or None when the run has none."""
    with downloaded_artifact(uri, run_id, path) as local:
        if local is None:
            return None
        with open(local) as f:
            return json.load(f)


def parquet_artifact(uri: str, run_id: str, path: str, artifact_uri: str = ""):
    """A run's Parquet artifact as a ``pyarrow.Table`` (its schema metadata kept, read into memory), or None when
    the run has none (``artifact_uri``: :func:`downloaded_artifact`)."""
    import pyarrow.parquet as pq

    with downloaded_artifact(uri, run_id, path, artifact_uri) as local:
        return None if local is None else pq.read_table(local, memory_map=False)


def parquet_artifacts(uri: str, runs: Sequence[tuple[str, str]], path: str, progress: str = "") -> dict[str, Any]:
    """The Parquet artifact ``path`` of each of ``runs`` (``(run_id, artifact_uri)`` pairs, as a search gives them):
    run id -> ``pyarrow.Table`` or None, read by :data:`ARTIFACT_READERS` threads (a campaign's hundreds of
    downloads through a server are latency, not CPU). ``progress``: a tqdm bar's label (none when empty)."""
    from concurrent.futures import ThreadPoolExecutor

    from tqdm import tqdm

    def one(run):
        return run[0], parquet_artifact(uri, run[0], path, run[1])

    with ThreadPoolExecutor(ARTIFACT_READERS) as pool:
        done = pool.map(one, runs)
        return dict(tqdm(done, total=len(runs), desc=progress, disable=not progress or None, leave=False))


def find_runs(uri: str, experiment: str, filter_string: str, limit: int | None = None,
              page_size: int = PAGE_SIZE) -> list[Any]:
    """Runs matching ``filter_string``, newest first (MLflow ``Run`` objects: ``.info.run_id``, ``.data``): all of
    them, or the newest ``limit``."""
    newest = iter_runs(uri, experiment, filter_string, ["attributes.start_time DESC"],
                       min(page_size, limit) if limit else page_size)
    return list(itertools.islice(newest, limit))


def child_runs(uri: str, experiment: str, parent_run_id: str, page_size: int = PAGE_SIZE) -> list[Any]:
    """Every child run of ``parent_run_id`` (tag ``mlflow.parentRunId``), newest first."""
    return find_runs(uri, experiment, f"tags.`{keys.PARENT_RUN_ID}` = '{parent_run_id}'", page_size=page_size)


def find_campaign_run(uri: str, experiment: str, name: str) -> str:
    """The latest parent run of the campaign called ``name``."""
    runs = find_runs(uri, experiment, keys.tag_filter(keys.KIND, "campaign") + " and "
                     + keys.tag_filter(keys.CAMPAIGN, name), limit=1)
    if not runs:
        raise ValueError(f"no campaign named {name!r} in experiment {experiment!r} at {uri}")
    return runs[0].info.run_id
