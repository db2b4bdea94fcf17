"""Planning at the scale users run campaigns: the plan and status commands load no torch or transformers, and a
DataDecide-sized budget's shares are counted, not materialised."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

HEAVY = ("torch", "transformers", "deepspeed", "lm_eval", "mlflow")
PROBE = """
import json, sys
sys.argv = ["proxy-campaign", *json.loads(sys.argv[1])]
import launchers.campaign as c
try:
    c.main()
except SystemExit as e:
    assert not e.code, e.code
print("LOADED " + json.dumps(sorted(m for m in {heavy} if m in sys.modules)))
"""


@pytest.mark.parametrize("action", ["plan", "status"])
@pytest.mark.parametrize("tokenizer", ["bpe", "olmo"])
def test_plan_and_status_import_no_torch(tmp_path, action, tokenizer):
    """27 of the 29 s of a small plan were imports (units.py -> data/shards.py -> data/tokenizer.py ->
    transformers -> torch); plan and status now need neither."""
    args = [f"action={action}", f"paths.root={tmp_path}", f"tokenizer={tokenizer}"]
    r = subprocess.run([sys.executable, "-c", PROBE.format(heavy=repr(HEAVY)), json.dumps(args)], capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    (line,) = [x for x in r.stdout.splitlines() if x.startswith("LOADED ")]
    assert json.loads(line[len("LOADED "):]) == [], line
    assert not (tmp_path / "cache").exists()  # a plan or status writes nothing (no tokenizer saved, no shard)


def test_shares_of_a_billion_parameter_budget_are_counted():
    """The 1B target reads ~3e8 positions: draws() counts them in closed form (exactly bincount(schedule)), in
    well under a second and without a per-position array; checked exactly against the schedule at sizes it can
    still materialise, and against the schedule's stated bound at the large one."""
    import time
    import tracemalloc

    from proxy_exp.data.mixture import draws, schedule

    rng = np.random.default_rng(3)
    weights = list(rng.dirichlet(np.full(25, 0.5)))
    for n in (1, 24, 25, 26, 1_000, 123_457, 2_000_000):
        np.testing.assert_array_equal(draws(weights, n), np.bincount(schedule(weights, n), minlength=25), err_msg=n)
    n = 315_000_000
    tracemalloc.start()
    t0 = time.perf_counter()
    counts = draws(weights, n)
    seconds = time.perf_counter() - t0
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    w = np.asarray(weights) / np.sum(weights)
    assert counts.sum() == n and np.abs(counts - w * n).max() <= (len(w) + 1) / 2
    assert seconds < 1.0 and peak < 1 << 20, (seconds, peak)  # the schedule took ~130 s and ~10 GB here


@pytest.mark.parametrize("recipes", [2, 6])
def test_each_input_file_is_stat_ed_once_per_plan(tmp_path, monkeypatch, recipes, capsys):
    """Recipes over shared JSON-lines sources: planning and printing the plan (ids, tokenize groups, estimated
    shares) stat each input file once, however many recipes read it (~29 times before)."""
    import collections
    import copy
    import json
    import os

    from launchers.app import to_job
    from launchers.campaign import print_plan
    from launchers.plan import plan_campaign
    from proxy_exp import units
    from proxy_exp.config import CampaignJobConfig, CorpusConfig, MixSourceConfig
    from tests.helpers import compose

    src_dir = tmp_path / "sources"
    for s in range(3):
        (src_dir / f"s{s}").mkdir(parents=True)
        for i in range(20):
            (src_dir / f"s{s}" / f"part-{i}.jsonl").write_text(json.dumps({"text": "words " * 400}) + "\n")
    job = to_job(compose("campaign", [f"paths.root={tmp_path / 'root'}", "tokenizer=olmo", "campaign=mini"]),
                 CampaignJobConfig)
    mix = {f"s{s}": MixSourceConfig(name=f"s{s}", source="jsonl", paths=[str(src_dir / f"s{s}")]) for s in range(3)}
    job.campaign.corpora = {}
    for r in range(recipes):
        m = copy.deepcopy(mix)
        for s, src in enumerate(m.values()):
            src.weight = 1.0 + (r + s) % 3
        job.campaign.corpora[f"r{r}"] = CorpusConfig(name=f"r{r}", source="mixture", mix=m)
    counts: collections.Counter = collections.Counter()
    real = os.stat

    def counting_stat(path, *args, **kwargs):
        if str(path).startswith(str(src_dir)) and str(path).endswith(".jsonl"):
            counts[str(path)] += 1
        return real(path, *args, **kwargs)

    monkeypatch.setattr(os, "stat", counting_stat)
    with units.input_memo():
        plan = plan_campaign(job)
        print_plan(job, plan)
    assert "data per corpus" in capsys.readouterr().out
    assert len(counts) == 60 and set(counts.values()) == {1}, counts.most_common(3)
