"""lm-eval's results as proxy-exp's metrics: names, values, directions (pure functions; no lm-eval import).

Naming: lm-eval reports ``"<metric>,<filter>"`` (``"acc,none"``, ``"exact_match,strict-match"``). proxy-exp logs
``eval/<task>/<name>`` with ``name = <metric>`` for filter ``none`` and ``<metric>_<filter>`` otherwise
(``exact_match_strict-match``), characters MLflow rejects replaced by ``_`` (:func:`metric_name`). Stderr entries
(``<metric>_stderr,<filter>``) and non-numbers (lm-eval's ``"N/A"``) are not metrics. proxy-exp adds
``logprob_per_char`` to multiple-choice tasks (:func:`logprob_per_char`) and ``n`` (documents scored) to every
task. Task names go through the same cleaning and lose ``/`` (a key has exactly three parts).

Direction: lm-eval's ``higher_is_better`` per task and metric, folded into one direction per metric name
(:func:`directions`) and logged by the evaluate job as the JSON param :data:`HIGHER_IS_BETTER_PARAM`;
:func:`direction_of` reads it back for analysis.
"""
from __future__ import annotations

import json
from typing import Any, Iterable, Mapping

from proxy_exp.config import LOGPROB_PER_CHAR  # proxy-exp's own metric: higher is better (a log-likelihood)
from proxy_exp.tracking import keys

N_DOCS = "n"  # documents scored: a count, not a metric (no direction, never in the mean)
OWN_HIGHER_IS_BETTER: dict[str, bool] = {LOGPROB_PER_CHAR: True}
NO_FILTER = "none"
# The evaluate run's param holding {metric name: higher_is_better (true | false | null when tasks disagree)}.
HIGHER_IS_BETTER_PARAM = keys.EVAL_HIGHER_IS_BETTER
MULTIPLE_CHOICE = "multiple_choice"


def metric_name(metric: str, filter_name: str = NO_FILTER) -> str:
    """The logged name of lm-eval's ``"<metric>,<filter>"``: ``metric`` for filter ``none``, else
    ``<metric>_<filter>``; MLflow-safe, without ``/``."""
    name = metric if filter_name == NO_FILTER else f"{metric}_{filter_name}"
    return keys.metric_name(name).replace("/", "_")


def task_name(task: str) -> str:
    """A task or group name as the middle part of ``eval/<task>/<metric>`` (MLflow-safe, no ``/``)."""
    return keys.metric_name(task).replace("/", "_")


def check_metric_name(name: str, setting: str) -> None:
    """ValueError unless ``name`` can be a logged metric name (the last part of ``eval/<task>/<metric>``)."""
    if not name or name != keys.metric_name(name) or "/" in name:
        raise ValueError(f"{setting}={name!r} is not a metric name as logged under eval/<task>/<metric> (e.g. acc, "
                         f"acc_norm, {LOGPROB_PER_CHAR}, exact_match_strict-match): fix {setting}")
    if name == N_DOCS:
        raise ValueError(f"{setting}={N_DOCS!r} is the number of documents, not a metric: choose a metric, e.g. "
                         f"acc or {LOGPROB_PER_CHAR}")


def split_result_key(key: str) -> tuple[str, str] | None:
    """``(metric, filter)`` of an lm-eval result key ``"<metric>,<filter>"``; None for stderr entries and for keys
    without a filter part (``alias``, ``name``, ``sample_len``)."""
    if "," not in key:
        return None
    metric, filter_name = key.split(",", 1)
    if metric.endswith("_stderr"):
        return None
    return metric, filter_name


def result_metrics(entry: Mapping[str, Any]) -> dict[str, float]:
    """The numeric metrics of one task's (or group's) entry of lm-eval's ``results``, by logged name."""
    out: dict[str, float] = {}
    for key, value in entry.items():
        parts = split_result_key(key)
        if parts is None or isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        name = metric_name(*parts)
        if name in out:
            raise ValueError(f"two lm-eval metrics are both logged as {name!r} (one of them is {key!r}); rename a "
                             "filter or metric in the task YAML")
        out[name] = float(value)
    return out


def first_filter_samples(samples: list[dict]) -> list[dict]:
    """One logged sample per document: lm-eval logs each document once per filter."""
    if not samples:
        return []
    first = samples[0].get("filter")
    return [s for s in samples if s.get("filter") == first]


def gold_index(sample: Mapping[str, Any], target_delimiter: str) -> int | None:
    """The index of the gold request of a multiple-choice sample: ``target`` as an index, or as the text of a choice
    (whose request continuation is ``target_delimiter + choice``); the first gold of several; None if not found."""
    target = sample["target"]
    if isinstance(target, (list, tuple)):
        if not target:
            return None
        target = target[0]
    continuations = [args[1] for args in sample["arguments"]]
    if isinstance(target, bool):
        return None
    if isinstance(target, int):
        return target if 0 <= target < len(continuations) else None
    for text in (f"{target_delimiter}{target}", str(target)):
        if text in continuations:
            return continuations.index(text)
    stripped = [c.strip() for c in continuations]
    return stripped.index(str(target).strip()) if str(target).strip() in stripped else None


def logprob_per_char(samples: list[dict], target_delimiter: str = " ") -> float | None:
    """Mean over documents of loglik(gold continuation) / len(gold continuation in characters), from lm-eval's
    logged multiple-choice samples (``arguments``: one ``(context, continuation)`` per choice, ``resps``: one
    ``[(loglik, is_greedy)]`` per choice, ``target``: the gold). None when some document's gold cannot be found."""
    values = []
    for sample in first_filter_samples(samples):
        gold = gold_index(sample, target_delimiter)
        if gold is None:
            return None
        loglik = float(sample["resps"][gold][0][0])
        values.append(loglik / max(len(sample["arguments"][gold][1]), 1))
    return sum(values) / len(values) if values else None


def directions(higher_is_better: Mapping[str, Mapping[str, Any]], tasks: Iterable[str],
               filters: Mapping[str, Iterable[str]]) -> dict[str, bool | None]:
    """One direction per logged metric name over ``tasks``: lm-eval's ``higher_is_better[task][metric]`` for each
    of the task's filters (``filters[task]``), None where tasks disagree or lm-eval does not know;
    ``logprob_per_char`` is proxy-exp's (higher is better)."""
    out: dict[str, bool | None] = dict(OWN_HIGHER_IS_BETTER)
    for task in tasks:
        for metric, hib in (higher_is_better.get(task) or {}).items():
            for f in filters.get(task, [NO_FILTER]):
                name = metric_name(metric, f)
                value = None if hib is None else bool(hib)
                out[name] = value if out.get(name, value) == value else None
    return out


def direction_of(param_values: Iterable[Any], metric: str) -> tuple[bool | None, int]:
    """``(higher_is_better, runs without it)`` of ``metric`` over evaluate runs' :data:`HIGHER_IS_BETTER_PARAM`
    values (JSON text, or None for runs logged before the param existed). ValueError when runs disagree."""
    seen: set[bool] = set()
    missing = 0
    for text in param_values:
        table = keys.parse_param(text) if isinstance(text, str) else None
        value = table.get(metric) if isinstance(table, dict) else None
        if value is None:
            missing += 1
        else:
            seen.add(bool(value))
    if len(seen) > 1:
        raise ValueError(f"the evaluate runs disagree on whether a higher {metric} is better ({HIGHER_IS_BETTER_PARAM}); "
                         "keep runs of one task set (analysis.filter)")
    return (seen.pop() if seen else None), missing


def default_direction(metric: str) -> bool | None:
    """Where no run logged a direction: proxy-exp's own metrics, else lm-eval's metric registry (the default a task
    YAML without ``higher_is_better`` gets) for the metric part of the name (``exact_match_strict-match`` ->
    ``exact_match``); None when neither knows it."""
    if metric in OWN_HIGHER_IS_BETTER:
        return OWN_HIGHER_IS_BETTER[metric]
    from lm_eval.api.registry import higher_is_better_registry

    import lm_eval.api.metrics  # noqa: F401  (registers lm-eval's metrics)

    parts = metric.split("_")
    for i in range(len(parts), 0, -1):  # longest metric prefix first: acc_norm before acc
        base = "_".join(parts[:i])
        if base in higher_is_better_registry:
            value = higher_is_better_registry.get(base)
            return None if value is None else bool(value)
    return None


def dumps_directions(table: Mapping[str, bool | None]) -> str:
    """The param value of :data:`HIGHER_IS_BETTER_PARAM` (sorted JSON)."""
    return json.dumps(dict(sorted(table.items())))
