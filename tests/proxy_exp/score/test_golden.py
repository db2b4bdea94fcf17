"""Golden proxies (tests/golden/proxies_tiny.json): the 80 proxies of a fixed tiny model over the fixture traces."""
import json

import pytest

from proxy_exp.config import ModelConfig, ScoreConfig, TracesConfig
from proxy_exp.data.tokenizer import train_bpe
from proxy_exp.data.traces import load_traces
from proxy_exp.models import build_model
from proxy_exp.score.pipeline import score_model
from tests.helpers import FIXTURE_TRACES, golden

pytestmark = pytest.mark.golden


def test_proxies_of_a_fixed_tiny_model_never_drift():
    traces = load_traces(TracesConfig(name="fixture", source="jsonl", tasks=[], per_task=0, paths=[FIXTURE_TRACES]))
    tok = train_bpe([t["prompt"] + t["solution"] for t in traces], 512)
    model = build_model(ModelConfig(name="golden", arch="llama", n_layers=2, d_model=32, n_heads=2, n_kv_heads=2,
                                    max_seq_len=256), len(tok), tok.bos_token_id, tok.eos_token_id, tok.pad_token_id,
                        seed=0)
    scores = score_model(model, tok, traces, ScoreConfig())
    actual = {"overall": scores.proxies, "tokens_scored": len(scores.tokens), "tokens_forward": scores.tokens_forward,
              "per_task": {t: {k: float(v) for k, v in row.items()} for t, row in scores.aggregate.per_task.iterrows()}}
    expected = json.loads(golden("proxies_tiny.json", json.dumps(actual, indent=1, sort_keys=True)))
    assert (actual["tokens_scored"], actual["tokens_forward"]) == (expected["tokens_scored"], expected["tokens_forward"])
    assert len(expected["overall"]) == 80 and actual["overall"] == pytest.approx(expected["overall"], rel=1e-6)
    for task, values in expected["per_task"].items():
        assert actual["per_task"][task] == pytest.approx(values, rel=1e-6, nan_ok=True), task
