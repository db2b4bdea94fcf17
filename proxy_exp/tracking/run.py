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
from proxy_exp.errors import TrackingUnavailable, first_line
from proxy_exp.tracking import keys

LOG_BATCH_METRICS = 1000  # MLflow's limit per log_batch call
LOG_BATCH_PARAMS = 100


def tracking_uri(cfg: TrackingConfig, root: str) -> str:
    """The tracking URI: the configured one, or the embedded SQLite store ``<root>/mlflow.db``."""
    return cfg.uri or f"sqlite:///{os.path.join(root, 'mlflow.db')}"


def configure(cfg: TrackingConfig, root: str, timeout_s: int | None = None) -> str:
    """Set MLflow's HTTP retry/timeouts (a down server otherwise blocks ~4 min per call) and the URI. MLflow reads its
    timeout from ``MLFLOW_HTTP_REQUEST_TIMEOUT`` at each request: ``timeout_s``, else the job's
    ``tracking.http_timeout_s`` (the read side passes ``tracking.analysis_timeout_s``: ``query.configure_reads``)."""
    os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = str(cfg.http_max_retries)
    os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] = str(cfg.http_timeout_s if timeout_s is None else timeout_s)
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
    import logging

    import mlflow

    # urllib3 logs each retry of a store that does not answer; proxy-exp says so itself, in one line
    logging.getLogger("urllib3.connectionpool").setLevel(logging.ERROR)

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


# MLflow 3's UI opens an experiment without this tag on its GenAI overview (traces, prompts, token usage); with it,
# on the training-runs view (the runs table, metric charts, artifacts) that proxy-exp's runs are for.
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"


def ensure_experiment(cfg: TrackingConfig, root: str) -> str:
    """Create the store and the experiment once (before jobs fan out: a fresh SQLite store races), tagged
    ``mlflow.experimentKind = custom_model_development``; an existing experiment without that tag gets it (one
    whose kind someone set is left as it is)."""
    uri = configure(cfg, root)
    with _store_lock(uri, root):
        from mlflow.exceptions import MlflowException
        from mlflow.tracking import MlflowClient

        client = MlflowClient(uri)
        exp = client.get_experiment_by_name(cfg.experiment)
        if exp is None:
            artifacts = "file://" + os.path.join(root, "mlartifacts") if uri.startswith("sqlite:") else None
            try:
                return client.create_experiment(cfg.experiment, artifact_location=artifacts,
                                                tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND})
            except MlflowException as e:  # another job created it at the same moment (a server: no file lock)
                if getattr(e, "error_code", "") != "RESOURCE_ALREADY_EXISTS":
                    raise
                exp = client.get_experiment_by_name(cfg.experiment)
                if exp is None:
                    raise
        if EXPERIMENT_KIND_TAG not in (exp.tags or {}):
            client.set_experiment_tag(exp.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
        return exp.experiment_id


def _first_line(e: BaseException) -> str:
    return first_line(e)[:200]


def _unreachable(e: BaseException) -> bool:
    """Whether ``e`` says the tracking store did not answer (rather than refused a request)."""
    import requests

    if isinstance(e, (requests.exceptions.ConnectionError, requests.exceptions.Timeout, ConnectionError)):
        return True
    text = str(e)
    return any(s in text for s in ("Max retries exceeded", "Connection refused", "Failed to establish a new connection",
                                   "Read timed out", "RemoteDisconnected", "Connection aborted", "ConnectTimeout"))


def _answering(uri: str, call):
    """``call()``, with a tracking store that does not answer said in one line (TrackingUnavailable)."""
    try:
        return call()
    except TrackingUnavailable:
        raise
    except Exception as e:  # noqa: BLE001
        if _unreachable(e):
            raise TrackingUnavailable(f"MLflow at {uri} does not answer ({_first_line(e)}): start the server "
                                      "(proxy-mlflow-server start --root DIR), or set tracking.uri to one that runs "
                                      "('' = the local SQLite store under paths.root)") from None
        if uri.startswith("sqlite:") and type(e).__name__ in ("OperationalError", "MlflowException") and (
                "unable to open database" in str(e) or "readonly" in str(e) or "disk I/O" in str(e)):
            raise TrackingUnavailable(f"the MLflow store {uri} cannot be written ({_first_line(e)}): make "
                                      "paths.root writable, or point tracking.uri at a server") from None
        raise


def _warn(message: str) -> None:
    import sys

    print(f"[proxy-exp] {message}", file=sys.stderr, flush=True)


class Run:
    """One MLflow run: a unit of work, a campaign parent, or an analysis.

    ``run_id`` resumes an existing run (a requeued or restarted unit continues its own run; ``reopen`` marks it
    RUNNING again); ``attach`` logs into someone else's run (``tracking.run_id``: a team's own training run), leaving
    its status alone. ``skip_logged_steps``: a resumed training run may already hold some steps (sent just before an
    interruption) and recomputes them: a (key, step) the run already holds is never sent a second time.
    As a context manager the run ends FAILED on an exception, FINISHED otherwise. With ``tracking.enabled=false``
    nothing is logged and ``run_id`` is empty (benchmarks and device checks on machines without MLflow).
    """

    def __init__(self, cfg: TrackingConfig, root: str, name: str, tags: dict[str, str] | None = None,
                 parent_run_id: str = "", run_id: str = "", reopen: bool = True,
                 skip_logged_steps: bool = False, attach: bool = False) -> None:
        self.enabled = cfg.enabled
        self.attached = attach
        self._buffer: list[Any] = []
        self._logged_upto: dict[str, int] | None = None
        if not self.enabled:
            self.run_id, self.uri, self.client = "", "", None
            return
        from mlflow.tracking import MlflowClient

        self.uri = tracking_uri(cfg, root)
        self.outage_s = cfg.outage_s
        self._down_since: float | None = None
        exp_id = _answering(self.uri, lambda: ensure_experiment(cfg, root))  # first: it creates a fresh store
        configure(cfg, root)
        self.client = MlflowClient(self.uri)
        all_tags = {keys.RUN_NAME: name, **(tags or {})}
        if parent_run_id:
            all_tags[keys.PARENT_RUN_ID] = parent_run_id
        if run_id:
            self.run_id = run_id
            try:
                self.client.get_run(run_id)
            except Exception as e:  # noqa: BLE001 (MLflow raises its own exception types)
                raise ValueError(f"tracking.run_id={run_id!r}: no such run at {self.uri} ({type(e).__name__}); give the "
                                 "id of an existing run (MLflow UI, run page) or leave tracking.run_id empty") from None
            if reopen and not attach:
                self.client.update_run(run_id, status="RUNNING")
        else:
            self.run_id = _answering(self.uri, lambda: self.client.create_run(exp_id, tags=all_tags,
                                                                              run_name=name).info.run_id)
        self._logged_upto = {} if run_id and skip_logged_steps else None

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
        if not self.enabled:
            return
        from mlflow.entities import Param

        existing = self.client.get_run(self.run_id).data.params
        items = [Param(k, keys.param_value(v)) for k, v in params.items() if k not in existing]
        for i in range(0, len(items), LOG_BATCH_PARAMS):
            self.client.log_batch(self.run_id, params=items[i:i + LOG_BATCH_PARAMS])

    def set_tags(self, tags: dict[str, Any]) -> None:
        if not self.enabled:
            return
        from mlflow.entities import RunTag

        items = [RunTag(k, str(v)) for k, v in tags.items()]
        for i in range(0, len(items), LOG_BATCH_PARAMS):
            self.client.log_batch(self.run_id, tags=items[i:i + LOG_BATCH_PARAMS])

    def log_metric(self, key: str, value: float, step: int = 0) -> None:
        """Buffer one metric point (sent by :meth:`flush`, or when the buffer holds a full batch)."""
        if not self.enabled:
            return
        from mlflow.entities import Metric

        if self._already_logged(key, int(step)):
            return
        self._buffer.append(Metric(key, float(value), int(time.time() * 1000), int(step)))
        if len(self._buffer) >= LOG_BATCH_METRICS:
            self.flush(wait=False)

    def log_metrics(self, metrics: dict[str, float], step: int = 0) -> None:
        for k, v in metrics.items():
            self.log_metric(k, v, step)

    def flush(self, wait: bool = True) -> None:
        """Send the buffered points. A store that does not answer keeps them buffered: with ``wait`` (a checkpoint,
        the run's end) this retries until the store answers or ``tracking.outage_s`` has passed since it stopped
        answering, then raises :class:`~proxy_exp.errors.TrackingUnavailable`; without ``wait`` it returns at once.
        A point that a request which failed may still have delivered is not sent twice (the run's history is
        checked before resending)."""
        while self._buffer:
            chunk = self._buffer[:LOG_BATCH_METRICS]
            try:
                if self._down_since is not None:
                    chunk = self._not_yet_logged(chunk)
                if chunk:
                    self.client.log_batch(self.run_id, metrics=chunk)
            except Exception as e:  # noqa: BLE001
                if not _unreachable(e):
                    raise
                now = time.monotonic()
                if self._down_since is None:
                    self._down_since = now
                    _warn(f"MLflow at {self.uri} does not answer ({_first_line(e)}): {len(self._buffer)} metric "
                          f"point(s) stay buffered and are sent when it is back (waiting at most "
                          f"{self.outage_s} s at the next checkpoint)")
                if not wait:
                    return
                if now - self._down_since > self.outage_s:
                    raise TrackingUnavailable(
                        f"MLflow at {self.uri} has not answered for {now - self._down_since:.0f} s "
                        f"(tracking.outage_s={self.outage_s}); {len(self._buffer)} metric point(s) were not sent. "
                        "Restart the server (proxy-mlflow-server start ...) and rerun: the unit resumes from its last "
                        "checkpoint") from None
                time.sleep(min(5.0, max(0.5, self.outage_s / 60)))
                continue
            if self._down_since is not None:
                _warn(f"MLflow at {self.uri} answers again: buffered metrics sent")
                self._down_since = None
            self._buffer = self._buffer[LOG_BATCH_METRICS:]

    def _not_yet_logged(self, chunk: list) -> list:
        """The points of ``chunk`` that the run does not hold yet (by key, step and value)."""
        held: dict[str, set] = {}
        for key in {m.key for m in chunk}:
            held[key] = {(m.step, m.value) for m in self.client.get_metric_history(self.run_id, key)}
        return [m for m in chunk if (m.step, m.value) not in held[m.key]]

    def discard_unflushed(self) -> int:
        """Drop the buffered, not yet sent points (a training run's steps after its last complete checkpoint,
        which a resumed run recomputes); returns how many."""
        n, self._buffer = len(self._buffer), []
        return n

    def log_artifact(self, path: str, artifact_path: str | None = None) -> None:
        if not self.enabled:
            return
        self.flush()
        self.client.log_artifact(self.run_id, path, artifact_path)

    def log_artifacts(self, path: str, artifact_path: str | None = None) -> None:
        if not self.enabled:
            return
        self.flush()
        self.client.log_artifacts(self.run_id, path, artifact_path)

    def end(self, status: str = "FINISHED") -> None:
        if not self.enabled:
            return
        self.flush()
        if self.attached:  # someone else's run: it ends when its owner ends it
            return
        self.client.set_terminated(self.run_id, status=status)

    def __enter__(self) -> "Run":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            self.end("FAILED" if exc_type else "FINISHED")
        except Exception:  # never mask the job's own exception with a tracking error
            if exc_type is None:
                raise


def log_to_active_run(metrics: dict[str, float], step: int) -> str:
    """Log ``metrics`` at ``step`` into the caller's active MLflow run (``mlflow.start_run()``, or the one a Hugging
    Face Trainer's MLflow integration started); returns its run id. ValueError when there is none."""
    import mlflow

    run = mlflow.active_run()
    if run is None:
        raise ValueError("no active MLflow run to log proxies into: start one (with mlflow.start_run(): ...), or "
                         "train with Trainer(args=TrainingArguments(report_to='mlflow')), or give the hook "
                         "log=<callable(metrics, step)>")
    mlflow.log_metrics({k: float(v) for k, v in metrics.items() if v == v}, step=int(step))
    return run.info.run_id

