"""Proxies (and optionally direct evaluation) of the in-memory model at checkpoints of its own training run, logged
as step metrics without extra jobs (as OLMo's in-loop evaluations): ``in_loop.score_every``, ``in_loop.eval_every``,
``in_loop.log_points`` (log-spaced steps, so that a forecast fitted on early checkpoints has enough of them)."""
from __future__ import annotations

import os

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from proxy_exp.config import TrainJobConfig
from proxy_exp.files import tmp_name
from proxy_exp.tracking import Run, keys

HISTORY_DTYPES = ("int64", "string", "float64")  # of keys.HISTORY_COLUMNS


def log_spaced_steps(n: int, total: int) -> set[int]:
    """``n`` distinct steps from 1 to ``total``, spaced geometrically (fewer when small steps coincide)."""
    if n <= 0 or total <= 0:
        return set()
    return {int(s) for s in np.unique(np.round(np.geomspace(1, total, n)).astype(int))}


class InLoopMetrics:
    """Scores the trace set and runs direct evaluation on the in-memory model at the steps they are due.

    With ``history_path`` (a file in the unit's folder) every step's metrics are also kept there as a tidy table
    (:data:`keys.HISTORY_COLUMNS`), rewritten at each due step, so that it survives a resume (rows past
    ``start_step``, which the resumed run recomputes, are dropped); :meth:`log_history` logs it as the run's
    :data:`keys.IN_LOOP_HISTORY` artifact, which analysis reads in one download."""

    def __init__(self, cfg: TrainJobConfig, tokenizer, cache_dir: str, total_steps: int = 0, history_path: str = "",
                 start_step: int = 0) -> None:
        self.cfg, self.tokenizer, self.cache_dir = cfg.in_loop, tokenizer, cache_dir
        self.traces = None
        self.total_steps, self.history_path = total_steps, history_path
        self.history = pd.DataFrame({c: pd.Series(dtype=t) for c, t in zip(keys.HISTORY_COLUMNS, HISTORY_DTYPES)})
        if history_path and os.path.exists(history_path):
            held = pd.read_parquet(history_path)
            self.history = held[held["step"] <= start_step]
        self.log_steps = log_spaced_steps(self.cfg.log_points, total_steps)
        if self.cfg.score_every > 0 or self.log_steps:
            from proxy_exp.data.traces import load_traces

            self.traces = load_traces(self.cfg.traces)

    @staticmethod
    def wanted(cfg: TrainJobConfig) -> bool:
        return cfg.in_loop.score_every > 0 or cfg.in_loop.eval_every > 0 or cfg.in_loop.log_points > 0

    def _score_due(self, step: int) -> bool:
        return (self.cfg.score_every > 0 and step % self.cfg.score_every == 0) or step in self.log_steps

    def _eval_due(self, step: int) -> bool:
        return (self.cfg.eval_every > 0 and step % self.cfg.eval_every == 0) or step in self.log_steps

    def due(self, step: int) -> bool:
        return self._score_due(step) or self._eval_due(step)

    def metrics(self, module, step: int) -> dict[str, float]:
        """The metrics due at ``step`` (``proxy/*``, ``eval/mean/*``), NaN-free; the module's mode is restored."""
        out: dict[str, float] = {}
        was_training = module.training
        module.eval()
        try:
            if self._score_due(step):
                from proxy_exp.score.pipeline import score_model

                out.update(score_model(module, self.tokenizer, self.traces, self.cfg.score).proxies)
            if self._eval_due(step):
                from proxy_exp.evaluate.harness import evaluate_in_memory

                ev = evaluate_in_memory(module, self.tokenizer, self.cfg.evaluate, self.cache_dir)
                out.update({keys.eval_key(keys.MEAN, k): float(v) for k, v in ev.mean.items()})
        finally:
            module.train(was_training)
        out = {k: v for k, v in out.items() if v == v}
        self._keep(step, out)
        return out

    def _keep(self, step: int, metrics: dict[str, float]) -> None:
        """Add ``step``'s metrics to the history (replacing any it held for that step) and rewrite its file."""
        if not self.history_path:
            return
        rows = pd.DataFrame({"step": step, "key": list(metrics), "value": list(metrics.values())})
        self.history = pd.concat([self.history[self.history["step"] != step], rows], ignore_index=True)
        table = pa.Table.from_pandas(self.history.astype(dict(zip(keys.HISTORY_COLUMNS, HISTORY_DTYPES))),
                                     preserve_index=False)
        table = table.replace_schema_metadata({**(table.schema.metadata or {}),
                                               keys.HISTORY_TOTAL_STEPS: str(self.total_steps)})
        os.makedirs(os.path.dirname(self.history_path), exist_ok=True)
        tmp = tmp_name(self.history_path)
        pq.write_table(table, tmp)
        os.replace(tmp, self.history_path)

    def log_history(self, run: Run) -> None:
        """Log the history file as the run's :data:`keys.IN_LOOP_HISTORY` artifact (nothing when no step was due)."""
        if self.history_path and os.path.exists(self.history_path):
            run.log_artifact(self.history_path, os.path.dirname(keys.IN_LOOP_HISTORY))
