"""The MLflow key schema: every tag, param and metric name proxy-exp writes is built here, and everything
that reads runs back (analysis/) parses names through here.

Tags (prefix ``proxy_exp.``): ``kind`` (campaign | train | score | evaluate | analyze), ``unit_id``,
``campaign``, ``corpus``, ``size``, ``role`` (proxy | target), ``seed``, ``train_unit`` (score / evaluate runs
of a campaign: the training unit whose model they read), ``model_dir`` and ``preempted_at_step`` (train runs),
``step`` and ``tokens_seen`` (a score / evaluate run of one checkpoint of another run).

Metrics:

- ``proxy/<statistic>/<weighting>``: the 80 proxies, macro-averaged over trace tasks (:func:`proxy_key`);
  ``proxy_task/<task>/<statistic>/<weighting>``: the same per trace task (:func:`proxy_task_key`).
- ``eval/<task>/<metric>``: direct evaluation per downstream task, ``eval/mean/<metric>`` its macro average
  over tasks (:func:`eval_key`). ``<metric>`` is lm-eval's metric name for filter ``none`` and
  ``<metric>_<filter>`` otherwise (e.g. ``exact_match_strict-match``), made MLflow-safe; ``n`` counts documents;
  ``logprob_per_char`` is added for multiple-choice tasks; lm-eval's ``higher_is_better`` of each metric is the
  param ``eval.higher_is_better`` (:data:`EVAL_HIGHER_IS_BETTER`).
- ``flops/train`` (train runs: cumulative at every step, so its latest value is the run's total; score and
  evaluate runs: the compute that produced the model), ``flops/score``, ``flops/eval``.
- ``train/loss``, ``train/lr``, ``train/tokens`` per step; ``train/final_loss``, ``train/seconds``.
- ``data/<source>/share``, ``.../weight``, ``.../epochs``, ``.../sequences`` (train runs, step 0): each source's
  realised share of the run's tokens, its weight, how often the budget repeats it, sequences drawn
  (:func:`data_key`).
- ``score/tokens_scored``, ``score/tokens_forward``, ``score/seconds``; ``eval/tokens_forward``, ``eval/seconds``.
- ``campaign/units_run``, ``campaign/units_failed``, ``campaign/seconds`` on a campaign's parent run.
- analysis runs: ``decision_accuracy/<method>``, ``model_selection/<method>/spearman_mean``,
  ``forecast/rmse/<method>`` (:func:`analysis_key`).

Params: a config flattened to ``a.b.c`` keys (:func:`flat_params`); lists and dicts are logged as JSON
(:func:`parse_param` reads them back, and also the Python ``repr`` that runs logged before 2026-12 hold).
"""
from __future__ import annotations

import json
import re
from typing import Any

from proxy_exp.config import to_dict

# ---------------------------------------------------------------------------------------------------- tags
TAG_PREFIX = "proxy_exp."
RUN_NAME = "mlflow.runName"
PARENT_RUN_ID = "mlflow.parentRunId"
KIND, UNIT_ID, CAMPAIGN, CORPUS, SIZE, ROLE, SEED, TRAIN_UNIT = (
    "kind", "unit_id", "campaign", "corpus", "size", "role", "seed", "train_unit")
MODEL_DIR, PREEMPTED_AT_STEP = "model_dir", "preempted_at_step"
# a campaign's parent run: the metric its decisions are judged by (the driver's evaluate.primary_metric, set each time
# a driver opens the run, so a later proxy-analyze judges by the truth the last driver used; a tag, since params
# keep their first value)
TRUTH_METRIC = "truth_metric"
STEP, TOKENS_SEEN = "step", "tokens_seen"  # a checkpoint's run: the step (and tokens seen) it was saved at
RUN_KINDS: tuple[str, ...] = ("campaign", "train", "score", "evaluate", "analyze")
UNIT_KINDS: tuple[str, ...] = ("train", "score", "evaluate")
ROLES: tuple[str, ...] = ("proxy", "target")


def tag(name: str) -> str:
    """The MLflow tag of one of proxy-exp's own tag names: ``proxy_exp.<name>``."""
    return TAG_PREFIX + name


def tag_column(name: str) -> str:
    """The column of tag ``name`` in an ``mlflow.search_runs`` frame: ``tags.proxy_exp.<name>``."""
    return "tags." + tag(name)


def tag_filter(name: str, value: str) -> str:
    """An MLflow search filter clause on one of proxy-exp's tags."""
    return f"tags.`{tag(name)}` = '{value}'"


def unit_tags(kind: str, unit_id: str, campaign: str, **extra: Any) -> dict[str, str]:
    """The tags of a run: its kind, unit id and campaign, plus ``extra`` (corpus, size, role, seed, ...)."""
    tags = {tag(KIND): kind, tag(UNIT_ID): unit_id, tag(CAMPAIGN): campaign}
    tags.update({tag(k): str(v) for k, v in extra.items() if v is not None})
    return tags


def checkpoint_tags(step: int, tokens_seen: int) -> dict[str, int]:
    """The tags of a run of one checkpoint of another run: its step and tokens seen (where known, i.e. >= 0)."""
    return {name: value for name, value in ((STEP, step), (TOKENS_SEEN, tokens_seen)) if value >= 0}


# ------------------------------------------------------------------------------------------------- metrics
PROXY, PROXY_TASK, EVAL = "proxy", "proxy_task", "eval"
MEAN = "mean"  # the pseudo-task of eval/<task>/<metric> that holds the macro average over tasks
FLOPS_TRAIN, FLOPS_SCORE, FLOPS_EVAL = "flops/train", "flops/score", "flops/eval"
TRAIN_LOSS, TRAIN_LR, TRAIN_TOKENS = "train/loss", "train/lr", "train/tokens"
TRAIN_FINAL_LOSS, TRAIN_SECONDS = "train/final_loss", "train/seconds"
SCORE_TOKENS_SCORED, SCORE_TOKENS_FORWARD, SCORE_SECONDS = "score/tokens_scored", "score/tokens_forward", "score/seconds"
EVAL_TOKENS_FORWARD, EVAL_SECONDS = "eval/tokens_forward", "eval/seconds"
CAMPAIGN_UNITS_RUN, CAMPAIGN_UNITS_FAILED, CAMPAIGN_SECONDS = (
    "campaign/units_run", "campaign/units_failed", "campaign/seconds")
N_PARAMS, N_PARAMS_NON_EMBEDDING = "n_params", "n_params_non_embedding"  # params (and train-run metrics)
EVAL_HIGHER_IS_BETTER = "eval.higher_is_better"  # param of evaluate runs: lm-eval's direction of each metric (JSON)
DATA = "data"  # train runs: data/<source>/<share | weight | epochs | sequences> (the realised mixture of the run)
DATA_FIELDS: tuple[str, ...] = ("share", "weight", "epochs", "sequences")


def data_key(source: str, what: str) -> str:
    """MLflow metric key of the realised data of a train run: ``data/<source>/<share|weight|epochs|sequences>``."""
    return f"{DATA}/{metric_name(source)}/{what}"


def proxy_key(statistic: str, weighting: str) -> str:
    """MLflow metric key of one proxy, ``proxy/<statistic>/<weighting>``."""
    return f"{PROXY}/{statistic}/{weighting}"


def proxy_name(statistic: str, weighting: str) -> str:
    """A proxy's name without the key prefix, ``<statistic>/<weighting>`` (as analysis tables show it)."""
    return f"{statistic}/{weighting}"


def proxy_task_key(task: str, statistic: str, weighting: str) -> str:
    """MLflow metric key of one proxy on one trace task, ``proxy_task/<task>/<statistic>/<weighting>``."""
    return f"{PROXY_TASK}/{task}/{statistic}/{weighting}"


def parse_proxy_key(key: str) -> tuple[str | None, str] | None:
    """``(task, "<statistic>/<weighting>")`` of a proxy metric key (task None for the overall ``proxy/...``), or
    None when ``key`` is not a proxy key. Trace-task names hold no ``/``."""
    parts = key.split("/")
    if len(parts) == 3 and parts[0] == PROXY:
        return None, f"{parts[1]}/{parts[2]}"
    if len(parts) == 4 and parts[0] == PROXY_TASK:
        return parts[1], f"{parts[2]}/{parts[3]}"
    return None


def eval_key(task: str, metric: str) -> str:
    """MLflow metric key of a direct-evaluation metric, ``eval/<task>/<metric>`` (task ``mean``: the macro
    average over tasks)."""
    return f"{EVAL}/{task}/{metric}"


def parse_eval_key(key: str) -> tuple[str, str] | None:
    """``(task, metric)`` of an ``eval/<task>/<metric>`` key, or None (``eval/seconds`` and the like)."""
    parts = key.split("/")
    if len(parts) == 3 and parts[0] == EVAL:
        return parts[1], parts[2]
    return None


_UNSAFE = re.compile(r"[^0-9A-Za-z_\-./ ]")


def metric_name(text: str) -> str:
    """``text`` as an MLflow-safe name part: spaces -> ``_``, ``@`` -> ``at``, other characters MLflow rejects
    -> ``_``."""
    return _UNSAFE.sub("_", str(text).replace("@", "at")).replace(" ", "_")


def analysis_key(family: str, *parts: str) -> str:
    """An analysis run's metric key, e.g. ``analysis_key("decision_accuracy", "top5/freq @ xs")``."""
    return "/".join([family, *(metric_name(p) for p in parts)])


# ----------------------------------------------------------------------------------------------- artifacts
# train runs with in-loop metrics: all of them in one tidy table (one row per step and metric key), so that analysis
# reads a run's checkpoints in one download instead of one metric history per key; its schema metadata holds the
# run's planned number of steps (a checkpoint's fraction of training)
IN_LOOP_HISTORY = "in_loop/history.parquet"
HISTORY_COLUMNS: tuple[str, ...] = ("step", "key", "value")
HISTORY_TOTAL_STEPS = "proxy_exp.total_steps"


# -------------------------------------------------------------------------------------------------- params
PARAM_MAX_CHARS = 6000  # MLflow's limit on a param value


def param_value(value: Any) -> str:
    """How a param value is logged: lists and dicts as JSON, everything else as ``str``."""
    if isinstance(value, (list, tuple, dict)):
        return json.dumps(to_dict(value), default=str)[:PARAM_MAX_CHARS]
    return str(value)[:PARAM_MAX_CHARS]


def flat_params(obj: Any, prefix: str = "") -> dict[str, str]:
    """A config dataclass (or dict) flattened to ``{"a.b.c": param_value(value)}`` for MLflow params.

    Nested dataclasses and dicts of a config become dotted keys; lists (and dicts of lists) stay one value."""
    out: dict[str, str] = {}
    d = to_dict(obj)
    if isinstance(d, dict):
        for k, v in d.items():
            key = f"{prefix}.{k}" if prefix else k
            if isinstance(v, dict):
                out.update(flat_params(v, key))
            else:
                out[key] = param_value(v)
    return out


def parse_param(text: Any) -> Any:
    """A logged param value read back: JSON (lists, dicts, numbers), else the Python ``repr`` of a list that
    runs logged before params were JSON, else the text itself."""
    if not isinstance(text, str):
        return text
    try:
        return json.loads(text)
    except (TypeError, ValueError):
        pass
    if text.startswith(("[", "(", "{")):
        import ast

        try:
            return ast.literal_eval(text)
        except (ValueError, SyntaxError):
            pass
    return text


def parse_param_list(text: Any) -> list[str]:
    """A logged list param (e.g. ``traces.tasks``) as a list of str; [] when it is not a list."""
    value = parse_param(text)
    return [str(v) for v in value] if isinstance(value, (list, tuple)) else []
