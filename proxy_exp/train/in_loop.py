"""Proxies (and optionally direct evaluation) of the in-memory model at checkpoints of its own training run, logged
as step metrics without extra jobs (as OLMo's in-loop evaluations): ``in_loop.score_every``, ``in_loop.eval_every``,
``in_loop.log_points`` (log-spaced steps, so that a forecast fitted on early checkpoints has enough of them)."""
from __future__ import annotations

import numpy as np

from proxy_exp.config import TrainJobConfig
from proxy_exp.tracking import keys


def log_spaced_steps(n: int, total: int) -> set[int]:
    """``n`` distinct steps from 1 to ``total``, spaced geometrically (fewer when small steps coincide)."""
    if n <= 0 or total <= 0:
        return set()
    return {int(s) for s in np.unique(np.round(np.geomspace(1, total, n)).astype(int))}


class InLoopMetrics:
    """Scores the trace set and runs direct evaluation on the in-memory model at the steps they are due."""

    def __init__(self, cfg: TrainJobConfig, tokenizer, cache_dir: str, total_steps: int = 0) -> None:
        self.cfg, self.tokenizer, self.cache_dir = cfg.in_loop, tokenizer, cache_dir
        self.traces = None
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
        return {k: v for k, v in out.items() if v == v}
