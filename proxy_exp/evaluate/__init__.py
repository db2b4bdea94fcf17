"""Direct downstream evaluation (lm-evaluation-harness on task YAMLs kept in the project)."""
from proxy_exp.evaluate.harness import (
    METRICS,
    EvalOutput,
    check_config,
    evaluate_in_memory,
    evaluate_lm,
    evaluate_model,
    set_offline,
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
    "set_offline", "TASKS_DIR", "available_tasks", "check_task", "iter_task_docs", "prepare_task_data",
    "task_config",
]
