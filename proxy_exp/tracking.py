"""The only module that talks to MLflow.

Runs are created with ``MlflowClient`` (no global active-run state), so a job can attach to a campaign's
parent run created in another process (tag ``mlflow.parentRunId``). Metrics are buffered and sent with
``log_batch`` (1000 points per call): per-call logging costs ~11 ms against a server.
"""
from __future__ import annotations

import contextlib
import os
import time
from typing import Any, Iterable

from proxy_exp.config import TrackingConfig

TAG = "proxy_exp."  # prefix of proxy-exp's own tags: kind, unit_id, campaign, corpus, size, role, seed, train_unit


def tracking_uri(cfg: TrackingConfig, root: str) -> str:
    """The tracking URI: the configured one, or the embedded SQLite store ``<root>/mlflow.db``."""
    return cfg.uri or f"sqlite:///{os.path.join(root, 'mlflow.db')}"


def configure(cfg: TrackingConfig, root: str) -> str:
    """Set MLflow's HTTP retry/timeouts (a down server otherwise blocks ~4 min per call) and the URI."""
    os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = str(cfg.http_max_retries)
    os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] = str(cfg.http_timeout_s)
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
    import mlflow

    uri = tracking_uri(cfg, root)
    mlflow.set_tracking_uri(uri)
    return uri


@contextlib.contextmanager
def _store_lock(uri: str, root: str):
    """Serialise creation of an embedded SQLite store: processes that create a fresh store at once race on its
    schema (`table ... already exists`, `duplicate column name`), e.g. the jobs of a Hydra multirun."""
    if not uri.startswith("sqlite:"):
        yield
        return
    import fcntl

    os.makedirs(root, exist_ok=True)
    with open(os.path.join(root, ".mlflow.lock"), "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def ensure_experiment(cfg: TrackingConfig, root: str) -> str:
    """Create the store and the experiment once (before jobs fan out: a fresh SQLite store races)."""
    uri = configure(cfg, root)
    with _store_lock(uri, root):
        return _ensure_experiment(cfg, uri, root)


def _ensure_experiment(cfg: TrackingConfig, uri: str, root: str) -> str:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(cfg.experiment)
    if exp is not None:
        return exp.experiment_id
    artifacts = None
    if uri.startswith("sqlite:"):
        artifacts = "file://" + os.path.join(root, "mlartifacts")
    return client.create_experiment(cfg.experiment, artifact_location=artifacts)


class Run:
    """One MLflow run: a unit of work, a campaign parent, or an analysis."""

    def __init__(self, cfg: TrackingConfig, root: str, name: str, tags: dict[str, str] | None = None,
                 parent_run_id: str = "", run_id: str = "", reopen: bool = True,
                 skip_logged_steps: bool = False) -> None:
        from mlflow.tracking import MlflowClient

        exp_id = ensure_experiment(cfg, root)  # first: it creates a fresh store under a lock
        self.uri = configure(cfg, root)
        self.client = MlflowClient(self.uri)
        all_tags = {"mlflow.runName": name, **(tags or {})}
        if parent_run_id:
            all_tags["mlflow.parentRunId"] = parent_run_id
        if run_id:  # resume (a requeued or restarted unit continues its own run)
            self.run_id = run_id
            if reopen:
                self.client.update_run(run_id, status="RUNNING")
        else:
            self.run_id = self.client.create_run(exp_id, tags=all_tags, run_name=name).info.run_id
        self._buffer: list[Any] = []
        # skip_logged_steps: a resumed training run may already hold some steps (sent just before an
        # interruption) and re-computes them: never send a (key, step) it already holds a second time
        self._logged_upto: dict[str, int] | None = {} if run_id and skip_logged_steps else None

    def _already_logged(self, key: str, step: int) -> bool:
        if self._logged_upto is None:
            return False
        if key not in self._logged_upto:
            hist = self.client.get_metric_history(self.run_id, key)
            self._logged_upto[key] = max((m.step for m in hist), default=-1)
        return step <= self._logged_upto[key]

    # -- logging
    def log_params(self, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(k, str(v)[:6000]) for k, v in params.items()]
        existing = self.client.get_run(self.run_id).data.params
        items = [p for p in items if p.key not in existing]
        for i in range(0, len(items), 100):
            self.client.log_batch(self.run_id, params=items[i:i + 100])

    def set_tags(self, tags: dict[str, Any]) -> None:
        from mlflow.entities import RunTag

        items = [RunTag(k, str(v)) for k, v in tags.items()]
        for i in range(0, len(items), 100):
            self.client.log_batch(self.run_id, tags=items[i:i + 100])

    def log_metric(self, key: str, value: float, step: int = 0) -> None:
        from mlflow.entities import Metric

        if self._already_logged(key, int(step)):
            return
        self._buffer.append(Metric(key, float(value), int(time.time() * 1000), int(step)))
        if len(self._buffer) >= 1000:
            self.flush()

    def log_metrics(self, metrics: dict[str, float], step: int = 0) -> None:
        for k, v in metrics.items():
            self.log_metric(k, v, step)

    def flush(self) -> None:
        while self._buffer:
            chunk, self._buffer = self._buffer[:1000], self._buffer[1000:]
            self.client.log_batch(self.run_id, metrics=chunk)

    def log_artifact(self, path: str, artifact_path: str | None = None) -> None:
        self.flush()
        self.client.log_artifact(self.run_id, path, artifact_path)

    def log_artifacts(self, path: str, artifact_path: str | None = None) -> None:
        self.flush()
        self.client.log_artifacts(self.run_id, path, artifact_path)

    def end(self, status: str = "FINISHED") -> None:
        self.flush()
        self.client.set_terminated(self.run_id, status=status)

    # -- context manager: FAILED on exception, FINISHED otherwise
    def __enter__(self) -> "Run":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            self.end("FAILED" if exc_type else "FINISHED")
        except Exception:  # never mask the job's own exception with a tracking error
            if exc_type is None:
                raise


def unit_tags(kind: str, unit_id: str, campaign: str, **extra: Any) -> dict[str, str]:
    tags = {TAG + "kind": kind, TAG + "unit_id": unit_id, TAG + "campaign": campaign}
    tags.update({TAG + k: str(v) for k, v in extra.items() if v is not None})
    return tags


def finished_units(cfg: TrackingConfig, root: str, unit_ids: Iterable[str] | None = None) -> dict[str, str]:
    """unit_id -> run_id of FINISHED unit runs in the experiment."""
    from mlflow.tracking import MlflowClient

    uri = configure(cfg, root)
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(cfg.experiment)
    if exp is None:
        return {}
    wanted = set(unit_ids) if unit_ids is not None else None
    out: dict[str, str] = {}
    token = None
    while True:
        page = client.search_runs([exp.experiment_id], filter_string="attributes.status = 'FINISHED'",
                                  max_results=1000, page_token=token)
        for r in page:
            uid = r.data.tags.get(TAG + "unit_id")
            if uid and (wanted is None or uid in wanted):
                out[uid] = r.info.run_id
        token = page.token
        if not token:
            return out
