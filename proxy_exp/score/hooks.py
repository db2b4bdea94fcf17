"""Proxies from a training loop that is not proxy-exp's: every N steps, the 80 proxies of the in-memory model over a
trace set, logged at the current step into the caller's MLflow run (setting 3 on a team's own run).

- :class:`ProxyHook`: a plain callable for any loop, ``hook(model, step)`` (scores only when ``step % every == 0``).
- :class:`ProxyCallback`: the same as a Hugging Face ``transformers.TrainerCallback`` (``Trainer(callbacks=[...])``),
  scoring on the main process at every ``every``-th optimizer step and logging into the active MLflow run (the one
  ``Trainer(report_to="mlflow")`` or the caller's ``mlflow.start_run()`` opened).

Both use :func:`proxy_exp.score.pipeline.score_model`, the function every proxy-exp job scores with, so the proxies
mean the same thing as in a campaign. ``proxy-analyze analysis=forecast analysis.train_run_id=<run>`` then forecasts
from them (with the run's own accuracy metric, or ``proxy-eval ... step=N tracking.run_id=<run>``).
"""
from __future__ import annotations

from typing import Any, Callable

from proxy_exp.config import ScoreConfig, TracesConfig
from proxy_exp.score.pipeline import score_model


class ProxyHook:
    """Score ``model`` every ``every`` steps and log ``proxy/*`` at that step.

    ``traces``: trace dicts (``id, task, prompt, solution``) or a :class:`~proxy_exp.config.TracesConfig` (loaded
    once). ``log``: where the metrics go, ``log(metrics, step)``; default the caller's active MLflow run
    (:func:`proxy_exp.tracking.run.log_to_active_run`; a due step with no active run raises ValueError). ``keys``:
    the proxies to log (default all 80, plus the per-task ones when ``per_task``). Returns the logged metrics, or
    None when the step is not due.
    """

    def __init__(self, tokenizer, traces: list[dict] | TracesConfig, every: int, score: ScoreConfig | None = None,
                 log: Callable[[dict[str, float], int], Any] | None = None, per_task: bool = False) -> None:
        if every < 1:
            raise ValueError(f"ProxyHook: every={every}: score every N >= 1 steps")
        if isinstance(traces, TracesConfig):
            from proxy_exp.data.traces import load_traces

            traces = load_traces(traces)
        if not traces:
            raise ValueError("ProxyHook: the trace set is empty: give trace dicts or a TracesConfig with traces")
        self.tokenizer, self.traces, self.every = tokenizer, list(traces), every
        self.score = score or ScoreConfig()
        self.per_task = per_task
        if log is None:
            from proxy_exp.tracking.run import log_to_active_run

            log = log_to_active_run
        self.log = log
        self.history: list[tuple[int, dict[str, float]]] = []

    def due(self, step: int) -> bool:
        return step > 0 and step % self.every == 0

    def __call__(self, model, step: int) -> dict[str, float] | None:
        if not self.due(step):
            return None
        result = score_model(model, self.tokenizer, self.traces, self.score)
        metrics = dict(result.proxies)
        if self.per_task:
            metrics.update(result.aggregate.per_task_metrics())
        metrics = {k: v for k, v in metrics.items() if v == v}
        self.log(metrics, step)
        self.history.append((step, metrics))
        return metrics


def _trainer_callback_base():
    from transformers import TrainerCallback

    return TrainerCallback


class ProxyCallback(_trainer_callback_base()):
    """A ``transformers.TrainerCallback``: the proxies of the model being trained every ``every`` optimizer steps
    (``state.global_step``), logged at that step into the active MLflow run (or through ``log``). Arguments as
    :class:`ProxyHook`."""

    def __init__(self, tokenizer, traces: list[dict] | TracesConfig, every: int, score: ScoreConfig | None = None,
                 log: Callable[[dict[str, float], int], Any] | None = None, per_task: bool = False) -> None:
        self.hook = ProxyHook(tokenizer, traces, every, score, log, per_task)

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.is_world_process_zero and model is not None:
            self.hook(model, state.global_step)
        return control
