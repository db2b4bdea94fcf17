"""A campaign's decisions on a synthetic campaign with planted proxies (no MLflow needed), its plots, and the
truth's spread against seed noise."""
from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from analysis.campaign_report import DIRECT_EVAL, campaign_decisions
from analysis.plots import plot_frontier, plot_ranking
from analysis.runs import campaign_frame
from proxy_exp.config import STATISTICS, WEIGHTINGS

from tests.helpers import (CORPORA, FLOPS_EVAL, FLOPS_SCORE, FLOPS_TRAIN_PROXY, FLOPS_TRAIN_TARGET, as_mlflow_frame,
                           synthetic_records)


@pytest.fixture(scope="module")
def report():
    frame = campaign_frame(as_mlflow_frame(synthetic_records(CORPORA, [0, 1], [0, 1])))
    return campaign_decisions(frame)


def test_campaign_decisions_planted(report):
    m = report.methods.set_index(["method", "size"])
    assert len(report.methods) == len(STATISTICS) * len(WEIGHTINGS) + 1 + 2  # + held-out single best, 3-sparse
    assert m.loc[("top5/freq", "xs"), "decision_accuracy"] == pytest.approx(1.0)
    assert m.loc[("top5/freq", "xs"), "spearman"] == pytest.approx(1.0)
    assert m.loc[("ce/uniform", "xs"), "decision_accuracy"] == pytest.approx(0.0)
    assert m.loc[("ce/uniform", "xs"), "spearman"] == pytest.approx(-1.0)
    assert m.loc[("ce/uniform", "xs"), "family"] == "ce"
    # Direct eval swaps the two best corpora: 1 of 10 pairs wrong.
    n_pairs = len(CORPORA) * (len(CORPORA) - 1) / 2
    assert m.loc[(DIRECT_EVAL, "xs"), "decision_accuracy"] == pytest.approx((n_pairs - 1) / n_pairs)
    assert m.loc[(DIRECT_EVAL, "xs"), "family"] == "direct_eval"
    # Compute per corpus: both proxy seeds trained and scored, relative to one target training run.
    seeds = 2
    assert m.loc[("top5/freq", "xs"), "compute"] == pytest.approx(
        seeds * (FLOPS_TRAIN_PROXY + FLOPS_SCORE) / FLOPS_TRAIN_TARGET)
    assert m.loc[(DIRECT_EVAL, "xs"), "compute"] == pytest.approx(
        seeds * (FLOPS_TRAIN_PROXY + FLOPS_EVAL) / FLOPS_TRAIN_TARGET)
    # The planted proxy is the cheapest perfect method, so it is on the frontier; direct eval is not.
    assert "top5/freq @ xs" in report.frontier["label"].tolist()
    assert DIRECT_EVAL + " @ xs" not in report.frontier["label"].tolist()
    t = report.table
    assert t["corpus"].tolist() == CORPORA
    assert t["truth_rank"].tolist() == list(range(1, len(CORPORA) + 1))
    assert t["proxy_rank"].tolist() == t["truth_rank"].tolist()
    assert t["ce_rank"].tolist() == t["truth_rank"].tolist()[::-1]
    text = report.summary_text()
    assert "primary proxy top5/freq: decision accuracy 1.000" in text
    assert "cross-entropy ce/uniform: decision accuracy 0.000" in text
    assert "best proxy (picked on these same corpora, so optimistic) top5/freq @ xs" in text
    # chosen out of sample: the planted proxy fits every held-in set (ties go to the a-priori primary proxy)
    held = m.loc[("single best (held out)", "xs")]
    assert held["family"] == "held_out" and held["decision_accuracy"] == 1.0 and held["chosen"] == "top5/freq"
    assert "single best (held out): decision accuracy 1.000" in text
    verdicts = [line for line in text.splitlines() if line.startswith("verdict @ xs")]
    assert len(verdicts) == 3
    assert verdicts[0].endswith("proxy top5/freq (a priori) decides better")  # 1.00 [1, 1] vs ce 0.00 [0, 0]
    assert "vs direct evaluation 0.90 [0.90, 0.90]" in verdicts[2] and verdicts[2].endswith("decides better")


def test_campaign_decisions_needs_truth():
    frame = campaign_frame(as_mlflow_frame(synthetic_records(["c0", "c1"], [0], [0])))
    with pytest.raises(ValueError, match="role target"):
        campaign_decisions(frame[~((frame["kind"] == "evaluate") & (frame["role"] == "target"))])
    with pytest.raises(ValueError, match="primary_proxy"):
        campaign_decisions(frame, primary_proxy="top4/freq")


def test_plots(report, tmp_path):
    front = plot_frontier(report.methods, report.frontier, str(tmp_path / "fig" / "frontier.png"),
                          label_col="label", title="synthetic")
    rank = plot_ranking(report.table, str(tmp_path / "fig" / "ranking.png"))
    for p in (front, rank):
        assert Path(p).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(x.name for x in (tmp_path / "fig").iterdir()) == ["frontier.png", "ranking.png"]


def test_truth_spread_against_seed_noise():
    from analysis.campaign_report import truth_spread_note

    clear = pd.DataFrame({0: [1.0, 2.0, 3.0], 1: [1.1, 2.1, 3.1]}, index=["a", "b", "c"])
    # means 1.05, 2.05, 3.05 (sd 1.0); within-corpus sd 0.0707; SE of a difference 0.0707: every pair separated
    assert "sd 1 vs seed noise sd 0.07071 (2 target seeds); 100% of corpus pairs" in truth_spread_note(clear)
    noisy = pd.DataFrame({0: [1.0, 1.5, 1.1], 1: [1.6, 1.0, 1.4]}, index=["a", "b", "c"])
    assert "; 0% of corpus pairs" in truth_spread_note(noisy)
    assert "seed noise not measured" in truth_spread_note(clear[[0]])


def test_truth_metric_and_its_direction():
    """Any logged eval/mean/<metric> can be the truth; its direction comes from the evaluate runs (lm-eval's
    higher_is_better, param eval.higher_is_better), else from lm-eval's metric registry (noted), else an error."""
    import json

    from analysis.campaign_report import truth_direction_from_runs
    from proxy_exp.evaluate.metrics import HIGHER_IS_BETTER_PARAM

    recs = synthetic_records(CORPORA, [0], [0])
    for r in recs:  # a lower-is-better truth: bits per byte falls as logprob_per_char rises (c0 best either way)
        if "eval/mean/logprob_per_char" in r["metrics"]:
            r["metrics"]["eval/mean/bits_per_byte"] = -r["metrics"]["eval/mean/logprob_per_char"]
            r["metrics"]["eval/mean/my_score"] = 1.0
    runs = as_mlflow_frame(recs)
    frame = campaign_frame(runs)
    evaluate = runs["tags.proxy_exp.kind"] == "evaluate"
    runs.loc[evaluate, "params." + HIGHER_IS_BETTER_PARAM] = json.dumps({"bits_per_byte": False, "acc": True})
    assert truth_direction_from_runs(runs, "bits_per_byte") is False
    assert truth_direction_from_runs(runs, "acc") is True and truth_direction_from_runs(runs, "my_score") is None

    def accuracy(report):
        return report.methods.set_index(["method", "size"]).loc[("top5/freq", "xs"), "decision_accuracy"]

    right = campaign_decisions(frame, truth_metric="bits_per_byte", n_boot=20,
                               truth_higher_is_better=truth_direction_from_runs(runs, "bits_per_byte"))
    assert accuracy(right) == pytest.approx(1.0) and right.table["truth_rank"].tolist() == [1, 2, 3, 4, 5]
    assert "lower is better" in right.summary_text()
    wrong = campaign_decisions(frame, truth_metric="bits_per_byte", n_boot=20, truth_higher_is_better=True)
    assert accuracy(wrong) == pytest.approx(0.0)  # the direction matters: reading it wrongly reverses every pair
    fallback = campaign_decisions(frame, truth_metric="bits_per_byte", n_boot=20)  # runs that logged no direction
    assert accuracy(fallback) == pytest.approx(1.0) and any("lm-eval's metric registry" in n for n in fallback.notes)
    with pytest.raises(ValueError, match="whether a higher my_score is better is unknown"):
        campaign_decisions(frame, truth_metric="my_score", n_boot=20)
    runs.loc[runs.index[evaluate][0], "params." + HIGHER_IS_BETTER_PARAM] = json.dumps({"bits_per_byte": True})
    with pytest.raises(ValueError, match="disagree"):
        truth_direction_from_runs(runs, "bits_per_byte")


def test_verdicts_that_call_no_difference_say_why_and_how_to_scale_up(report):
    """Where every method decides alike within its CI (as the default campaign does on 2 cores), the summary says
    the scale cannot separate them and gives the command of the same campaign at cluster scale."""
    import dataclasses

    from analysis.campaign_report import CLUSTER_COMMAND

    methods = report.methods.copy()
    methods[["decision_accuracy", "da_lo", "da_hi"]] = [0.9, 0.8, 1.0]
    lines = dataclasses.replace(report, methods=methods).verdict_lines()
    assert len(lines) == 4 and all("no difference beyond the 95% CIs" in line for line in lines[:3])
    assert lines[3].startswith("scale: at this campaign's scale the methods cannot be told apart (5 corpora, 10 pairs")
    assert CLUSTER_COMMAND in lines[3] and "campaign.target_size=dd_1b" in CLUSTER_COMMAND
    assert not any(line.startswith("scale:") for line in report.verdict_lines())  # the planted report calls some


def test_a_campaign_scored_in_two_precisions_says_so(report):
    """Score runs partly in fp32 (CPU) and partly in bf16 (GPU), as model.dtype=auto gives a campaign run on both:
    the report names the mix and the setting that makes it one precision; one precision gives no such note."""
    runs = as_mlflow_frame(synthetic_records(CORPORA, [0, 1], [0, 1]))
    kind = runs["tags.proxy_exp.kind"]
    runs.loc[kind.isin(["score", "evaluate"]), "params.model.dtype_resolved"] = "float32"
    assert not any("precisions" in n for n in campaign_decisions(campaign_frame(runs), n_boot=20).notes)
    bf16 = runs.index[kind == "score"][:3]
    runs.loc[bf16, "params.model.dtype_resolved"] = "bfloat16"
    frame = campaign_frame(runs)
    assert sorted(frame.loc[frame["kind"] == "score", "dtype"].unique()) == ["bfloat16", "float32"]
    notes = [n for n in campaign_decisions(frame, n_boot=20).notes if "precisions" in n]
    n_score = int((kind == "score").sum())
    assert notes == [f"the score runs mixed precisions (3 in bfloat16, {n_score - 3} in float32): their results are "
                     "compared across dtypes; set campaign.sizes.<size>.dtype (e.g. bfloat16): the score and "
                     "evaluate units then get new ids and run again, all in that precision"]


def test_methods_ranked_together_give_each_methods_own_numbers():
    """_evaluate_methods (80 proxies of a checkpoint in one array) against _evaluate_method one by one: the same
    numbers, bit for bit, with ties, both directions, a method over other corpora, one with a NaN (falls back and
    raises the same error) and one sharing fewer than 2 corpora with the truth."""
    import numpy as np
    import pandas as pd
    import pytest

    from analysis.campaign_report import _evaluate_method, _evaluate_methods

    rng = np.random.default_rng(3)
    corpora = [f"c{i}" for i in range(9)]
    truth = pd.Series(rng.normal(size=9).round(1), index=corpora)  # rounded: ties in the truth
    frames = [pd.DataFrame(rng.normal(size=(9, 3)).round(1), index=corpora, columns=[0, 1, 2]) for _ in range(12)]
    frames.append(frames[0].iloc[2:].copy())  # other corpora
    frames.append(frames[1].iloc[:, :1].copy())  # one seed
    frames.append(pd.DataFrame({0: [1.0, 2.0]}, index=["c0", "x"]))  # one corpus in common
    lowers = [bool(i % 2) for i in range(len(frames))]
    for truth_lower in (False, True):
        got = _evaluate_methods(frames, truth, lowers, truth_lower)
        want = [_evaluate_method(f, truth, low, truth_lower) for f, low in zip(frames, lowers)]
        assert len(got) == len(want)
        assert all(pd.Series(g).equals(pd.Series(w)) for g, w in zip(got, want))  # NaN where NaN, else equal
    bad = frames[2].copy()
    bad.iloc[0, 1] = np.nan
    with pytest.raises(ValueError, match="lack a value"):
        _evaluate_methods([frames[0], bad], truth, [False, False], False)
