"""The write side of MLflow: the store and experiment, and :class:`Run` (one unit of work, a campaign parent, or
an analysis).

Runs are created with ``MlflowClient`` (no global active-run state), so a job can attach to a campaign's parent run
created in another process (tag ``mlflow.parentRunId``). Metrics are buffered and sent with ``log_batch`` (1000
points per call): per-call logging costs ~11 ms against a server.
"""
from __future__ import annotations

import contextlib
import os
import time
from typing import Any

from proxy_exp.config import TrackingConfig
from proxy_exp.tracking import keys

LOG_BATCH_METRICS = 1000  # MLflow's limit per log_batch call
LOG_BATCH_PARAMS = 100


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
    from filelock import FileLock

    os.makedirs(root, exist_ok=True)
    with FileLock(os.path.join(root, ".mlflow.lock")):
        yield


def ensure_experiment(cfg: TrackingConfig, root: str) -> str:
    """Create the store and the experiment once (before jobs fan out: a fresh SQLite store races)."""
    uri = configure(cfg, root)
    with _store_lock(uri, root):
        from mlflow.tracking import MlflowClient

        client = MlflowClient(uri)
        exp = client.get_experiment_by_name(cfg.experiment)
        if exp is not None:
            return exp.experiment_id
        artifacts = "file://" + os.path.join(root, "mlartifacts") if uri.startswith("sqlite:") else None
        return client.create_experiment(cfg.experiment, artifact_location=artifacts)


class Run:
    """One MLflow run: a unit of work, a campaign parent, or an analysis.

    ``run_id`` resumes an existing run (a requeued or restarted unit continues its own run; ``reopen`` marks it
    RUNNING again). ``skip_logged_steps``: a resumed training run may already hold some steps (sent just before an
    interruption) and recomputes them: a (key, step) the run already holds is never sent a second time.
    As a context manager the run ends FAILED on an exception, FINISHED otherwise.
    """

    def __init__(self, cfg: TrackingConfig, root: str, name: str, tags: dict[str, str] | None = None,
                 parent_run_id: str = "", run_id: str = "", reopen: bool = True,
                 skip_logged_steps: bool = False) -> None:
        from mlflow.tracking import MlflowClient

        exp_id = ensure_experiment(cfg, root)  # first: it creates a fresh store under a lock
        self.uri = configure(cfg, root)
        self.client = MlflowClient(self.uri)
        all_tags = {keys.RUN_NAME: name, **(tags or {})}
        if parent_run_id:
            all_tags[keys.PARENT_RUN_ID] = parent_run_id
        if run_id:
            self.run_id = run_id
            if reopen:
                self.client.update_run(run_id, status="RUNNING")
        else:
            self.run_id = self.client.create_run(exp_id, tags=all_tags, run_name=name).info.run_id
        self._buffer: list[Any] = []
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
        """Log params not yet in the run (a resumed run keeps its first values)."""
        from mlflow.entities import Param

        existing = self.client.get_run(self.run_id).data.params
        items = [Param(k, keys.param_value(v)) for k, v in params.items() if k not in existing]
        for i in range(0, len(items), LOG_BATCH_PARAMS):
            self.client.log_batch(self.run_id, params=items[i:i + LOG_BATCH_PARAMS])

    def set_tags(self, tags: dict[str, Any]) -> None:
        from mlflow.entities import RunTag

        items = [RunTag(k, str(v)) for k, v in tags.items()]
        for i in range(0, len(items), LOG_BATCH_PARAMS):
            self.client.log_batch(self.run_id, tags=items[i:i + LOG_BATCH_PARAMS])

    def log_metric(self, key: str, value: float, step: int = 0) -> None:
        """Buffer one metric point (sent by :meth:`flush`, or when the buffer holds a full batch)."""
        from mlflow.entities import Metric

        if self._already_logged(key, int(step)):
            return
        self._buffer.append(Metric(key, float(value), int(time.time() * 1000), int(step)))
        if len(self._buffer) >= LOG_BATCH_METRICS:
            self.flush()

    def log_metrics(self, metrics: dict[str, float], step: int = 0) -> None:
        for k, v in metrics.items():
            self.log_metric(k, v, step)

    def flush(self) -> None:
        while self._buffer:
            chunk, self._buffer = self._buffer[:LOG_BATCH_METRICS], self._buffer[LOG_BATCH_METRICS:]
            self.client.log_batch(self.run_id, metrics=chunk)

    def discard_unflushed(self) -> int:
        """Drop the buffered, not yet sent points (a training run's steps after its last complete checkpoint,
        which a resumed run recomputes); returns how many."""
        n, self._buffer = len(self._buffer), []
        return n

    def log_artifact(self, path: str, artifact_path: str | None = None) -> None:
        self.flush()
        self.client.log_artifact(self.run_id, path, artifact_path)

    def log_artifacts(self, path: str, artifact_path: str | None = None) -> None:
        self.flush()
        self.client.log_artifacts(self.run_id, path, artifact_path)

    def end(self, status: str = "FINISHED") -> None:
        self.flush()
        self.client.set_terminated(self.run_id, status=status)

    def __enter__(self) -> "Run":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            self.end("FAILED" if exc_type else "FINISHED")
        except Exception:  # never mask the job's own exception with a tracking error
            if exc_type is None:
                raise
