"""Everything proxy-exp says to and reads from MLflow; the only package that imports mlflow.

- :mod:`proxy_exp.tracking.keys`: the key schema (every tag, param and metric name, built and parsed there).
- :mod:`proxy_exp.tracking.run`: the store, the experiment and :class:`Run` (the write side).
- :mod:`proxy_exp.tracking.query`: runs as frames, metric histories, artifacts (the read side, for analysis/).
- :mod:`proxy_exp.tracking.server`: a shared tracking server's start / stop / status (``proxy-mlflow-server``).
"""
from proxy_exp.tracking.keys import unit_tags
from proxy_exp.tracking.run import Run, configure, ensure_experiment, tracking_uri

__all__ = ["Run", "configure", "ensure_experiment", "tracking_uri", "unit_tags"]
