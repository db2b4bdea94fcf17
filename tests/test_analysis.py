"""Tests of the analysis layer: decisions, Pareto frontiers, compute, MLflow read-back, campaign
report, plots, and the DataDecide real-data check."""
from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

import analysis
from analysis import datadecide
from analysis.campaign_report import DIRECT_EVAL, campaign_decisions
from analysis.compute import forward_flops, relative_compute, train_flops
from analysis.decisions import decision_accuracy, decision_accuracy_seeds, rank_correlations, ranks
from analysis.pareto import pareto_frontier
from analysis.plots import plot_frontier, plot_ranking
from analysis.runs import campaign_frame, load_runs
from proxy_exp.config import STATISTICS, WEIGHTINGS, proxy_key


# --------------------------------------------------------------------------- decisions
def test_decision_accuracy_hand_case_and_directions():
    pred = {"a": 1.0, "b": 2.0, "c": 3.0, "only_pred": 9.0}
    truth = {"a": 1.0, "b": 3.0, "c": 2.0}
    # Higher is better for both: (a,b) b wins in both, (a,c) c wins in both, (b,c) pred c, truth b.
    assert decision_accuracy(pred, truth, False, False) == pytest.approx(2 / 3)
    # Pred lower-is-better: a is predicted best; only (b,c) -> b agrees with truth.
    assert decision_accuracy(pred, truth, True, False) == pytest.approx(1 / 3)
    # Flipping both directions gives back the same decisions.
    assert decision_accuracy(pred, truth, True, True) == pytest.approx(2 / 3)
    # Negating the values and the direction together changes nothing.
    neg = {k: -v for k, v in pred.items()}
    assert decision_accuracy(neg, truth, True, False) == decision_accuracy(pred, truth, False, False)
    # pd.Series and Mapping give the same answer.
    assert decision_accuracy(pd.Series(pred), pd.Series(truth), False, False) == pytest.approx(2 / 3)


def test_decision_accuracy_ties():
    truth = {"a": 1.0, "b": 2.0, "c": 3.0}
    # (a,b) tied in pred -> 0.5; (a,c) and (b,c) right -> (0.5 + 1 + 1) / 3.
    assert decision_accuracy({"a": 1.0, "b": 1.0, "c": 3.0}, truth, False, False) == pytest.approx(2.5 / 3)
    # (a,b) tied in truth -> skipped; (a,c) right, (b,c) wrong -> 1 / 2.
    assert decision_accuracy({"a": 1.0, "b": 5.0, "c": 3.0}, {"a": 1.0, "b": 1.0, "c": 2.0},
                             False, False) == pytest.approx(0.5)
    # Everything tied in truth: no decision to score.
    assert np.isnan(decision_accuracy({"a": 1.0, "b": 2.0}, {"a": 0.0, "b": 0.0}, False, False))
    # A constant predictor scores exactly chance.
    assert decision_accuracy({k: 0.0 for k in truth}, truth, True, False) == pytest.approx(0.5)


def test_decision_accuracy_matches_brute_force():
    rng = np.random.default_rng(0)
    items = [f"r{i}" for i in range(12)]
    for trial in range(5):
        pred = dict(zip(items, rng.integers(0, 5, len(items)).astype(float)))  # many ties
        truth = dict(zip(items, rng.integers(0, 6, len(items)).astype(float)))
        lower_p, lower_t = bool(trial % 2), bool(trial // 2 % 2)
        scores = []
        for x, y in itertools.combinations(items, 2):
            if truth[x] == truth[y]:
                continue
            true_winner = x if (truth[x] < truth[y]) == lower_t else y
            if pred[x] == pred[y]:
                scores.append(0.5)
            else:
                pred_winner = x if (pred[x] < pred[y]) == lower_p else y
                scores.append(float(pred_winner == true_winner))
        assert decision_accuracy(pred, truth, lower_p, lower_t) == pytest.approx(np.mean(scores))


def test_decision_accuracy_bad_input():
    with pytest.raises(ValueError, match="share 1 item"):
        decision_accuracy({"a": 1.0, "b": 2.0}, {"a": 1.0, "c": 2.0}, False, False)
    with pytest.raises(ValueError, match="NaN"):
        decision_accuracy({"a": 1.0, "b": float("nan")}, {"a": 1.0, "b": 2.0}, False, False)
    with pytest.raises(ValueError, match="more than once"):
        decision_accuracy(pd.Series([1.0, 2.0], index=["a", "a"]), {"a": 1.0}, False, False)


def test_decision_accuracy_seeds():
    truth = {"a": 3.0, "b": 2.0, "c": 1.0}  # higher is better: a > b > c
    by_seed = pd.DataFrame({0: {"a": 1.0, "b": 2.0, "c": 3.0},   # lower better: a > b > c, 3/3
                            1: {"a": 2.5, "b": 2.0, "c": 3.0}},  # b > a > c: 2/3
                           )
    out = decision_accuracy_seeds(by_seed, truth, True, False)
    assert out["per_seed"] == {0: pytest.approx(1.0), 1: pytest.approx(2 / 3)}
    assert out["decision_accuracy_per_seed_mean"] == pytest.approx(5 / 6)
    # Seed mean: a 1.75, b 2.0, c 3.0 -> a > b > c.
    assert out["decision_accuracy"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="every seed"):
        decision_accuracy_seeds(by_seed.assign(**{"2": [1.0, np.nan, 2.0]}), truth, True, False)


def test_rank_correlations_against_scipy():
    rng = np.random.default_rng(1)
    items = [f"r{i}" for i in range(9)]
    p = pd.Series(rng.normal(size=9), index=items)
    t = pd.Series(rng.normal(size=9), index=items)
    sp, kt = stats.spearmanr(p, t), stats.kendalltau(p, t)
    same = rank_correlations(p, t, False, False)
    assert same["spearman"] == pytest.approx(sp.statistic) and same["kendall"] == pytest.approx(kt.statistic)
    assert same["spearman_p"] == pytest.approx(sp.pvalue) and same["kendall_p"] == pytest.approx(kt.pvalue)
    assert rank_correlations(p, t, True, True)["spearman"] == pytest.approx(sp.statistic)
    flipped = rank_correlations(p, t, True, False)
    assert flipped["spearman"] == pytest.approx(-sp.statistic) and flipped["kendall"] == pytest.approx(-kt.statistic)
    assert flipped["spearman_p"] == pytest.approx(sp.pvalue)
    # A lower-is-better prediction that orders exactly as the truth scores +1.
    assert rank_correlations(-t, t, True, False)["spearman"] == pytest.approx(1.0)


def test_ranks():
    v = {"a": 3.0, "b": 1.0, "c": 3.0}
    assert ranks(v, lower_is_better=True).to_dict() == {"a": 2, "b": 1, "c": 2}
    assert ranks(v, lower_is_better=False).to_dict() == {"a": 1, "b": 3, "c": 1}


# --------------------------------------------------------------------------- pareto, compute
def test_pareto_frontier_hand_case():
    df = pd.DataFrame({"method": ["p1", "dominated_y", "p2", "dominated_x", "p3", "nan", "dup"],
                       "compute": [1.0, 2.0, 2.0, 3.0, 4.0, 0.5, 4.0],
                       "decision_accuracy": [0.5, 0.4, 0.7, 0.7, 0.9, np.nan, 0.9]})
    front = pareto_frontier(df)
    assert front["method"].tolist() == ["p1", "p2", "p3"]
    assert front["compute"].is_monotonic_increasing
    with pytest.raises(ValueError, match="columns"):
        pareto_frontier(df, x="flops")


def test_compute_formulas():
    n, d, layers, width, seq = 1000, 10, 2, 8, 4
    # nanoGPT estimate_mfu: flops per token = 6N + 12 L H Q T with H * Q = d_model, times tokens.
    assert train_flops(n, d, layers, width, seq) == pytest.approx((6 * n + 12 * layers * width * seq) * d)
    assert train_flops(n, d, 0, width, seq) == pytest.approx(6 * n * d)
    assert forward_flops(n, d) == pytest.approx(2 * n * d)
    assert relative_compute(5.0, 100.0) == pytest.approx(0.05)
    with pytest.raises(ValueError, match="target_flops"):
        relative_compute(1.0, 0.0)
    with pytest.raises(ValueError, match="tokens"):
        train_flops(n, -1, layers, width, seq)


# --------------------------------------------------------------------------- synthetic campaign
FLOPS_TRAIN_PROXY, FLOPS_SCORE, FLOPS_EVAL, FLOPS_TRAIN_TARGET = 1e12, 1e10, 1e11, 1e15
ALL_KEYS = [proxy_key(s, w) for s in STATISTICS for w in WEIGHTINGS]


def synthetic_records(corpora: list[str], proxy_seeds: list[int], target_seeds: list[int],
                      campaign: str = "syn", proxy_eval: bool = True) -> list[dict]:
    """Runs of a campaign whose truth ranks corpora in list order (first = best). top5/freq is
    planted to order them exactly as the truth, ce/uniform reversed, direct eval with the first two
    swapped; every other proxy is noise."""
    rng = np.random.default_rng(7)
    recs: list[dict] = []

    def add(kind, corpus, size, role, seed, metrics, status="FINISHED"):
        uid = f"{campaign}-{kind}-{corpus}-{size}-{seed}"
        tags = {"proxy_exp.kind": kind, "proxy_exp.unit_id": uid, "proxy_exp.campaign": campaign,
                "proxy_exp.corpus": corpus, "proxy_exp.size": size, "proxy_exp.role": role,
                "proxy_exp.seed": str(seed)}
        if kind in ("score", "evaluate"):
            tags["proxy_exp.train_unit"] = f"{campaign}-train-{corpus}-{size}-{seed}"
        recs.append({"tags": tags, "metrics": metrics, "status": status})

    n = len(corpora)
    for i, c in enumerate(corpora):
        truth = -1.0 - 0.1 * i
        swapped = -1.0 - 0.1 * {0: 1, 1: 0}.get(i, i)
        for s in proxy_seeds:
            add("train", c, "xs", "proxy", s, {"train/final_loss": 3.0 + i, "flops/train": FLOPS_TRAIN_PROXY})
            m = {k: float(rng.normal()) for k in ALL_KEYS}
            m[proxy_key("top5", "freq")] = 0.5 - 0.05 * i + 0.001 * s  # higher better, truth order
            m[proxy_key("ce", "uniform")] = 2.0 - 0.1 * i + 0.001 * s  # lower better: reversed
            m.update({"flops/score": FLOPS_SCORE, "flops/train": FLOPS_TRAIN_PROXY})
            add("score", c, "xs", "proxy", s, m)
            if proxy_eval:
                add("evaluate", c, "xs", "proxy", s, {"eval/mean/logprob_per_char": swapped + 0.001 * s,
                                                      "eval/mean/acc": 0.3, "flops/eval": FLOPS_EVAL,
                                                      "flops/train": FLOPS_TRAIN_PROXY})
        for s in target_seeds:
            add("train", c, "s", "target", s, {"train/final_loss": 2.0, "flops/train": FLOPS_TRAIN_TARGET})
            offset = 0.01 * (s - np.mean(target_seeds))
            add("evaluate", c, "s", "target", s, {"eval/mean/logprob_per_char": truth + offset,
                                                  "eval/mean/acc": 0.5 + 0.01 * (n - i),
                                                  "flops/eval": FLOPS_EVAL * 10, "flops/train": FLOPS_TRAIN_TARGET})
    return recs


def as_mlflow_frame(recs: list[dict]) -> pd.DataFrame:
    """The records laid out as mlflow.search_runs gives them (metrics.*, tags.*, run_id, status)."""
    rows = []
    for j, r in enumerate(recs):
        row = {"run_id": f"run{j:03d}", "status": r["status"]}
        row.update({f"tags.{k}": v for k, v in r["tags"].items()})
        row.update({f"metrics.{k}": v for k, v in r["metrics"].items()})
        rows.append(row)
    return pd.DataFrame(rows)


CORPORA = ["c0", "c1", "c2", "c3", "c4"]


@pytest.fixture(scope="module")
def report():
    frame = campaign_frame(as_mlflow_frame(synthetic_records(CORPORA, [0, 1], [0, 1])))
    return campaign_decisions(frame)


def test_campaign_frame_tidy_and_filters():
    recs = synthetic_records(["c0", "c1"], [0], [0])
    recs.append({"tags": {**recs[0]["tags"], "proxy_exp.unit_id": "failed"}, "metrics": {}, "status": "FAILED"})
    recs.append({"tags": {"proxy_exp.kind": "campaign", "proxy_exp.unit_id": "parent"}, "metrics": {},
                 "status": "FINISHED"})
    runs = as_mlflow_frame(recs)
    frame = campaign_frame(runs)
    assert len(frame) == len(recs) - 2  # the failed and the campaign run are dropped
    assert not frame.duplicated(["kind", "corpus", "size", "role", "seed"]).any()
    assert {"flops/train", "flops/score", "eval/mean/logprob_per_char", proxy_key("top5", "freq")} <= set(frame.columns)
    assert not any(c.startswith("metrics.") for c in frame.columns)
    assert frame["seed"].dtype.kind == "i"
    only = campaign_frame(runs, unit_ids={recs[0]["tags"]["proxy_exp.unit_id"]})
    assert len(only) == 1 and only["kind"].iloc[0] == recs[0]["tags"]["proxy_exp.kind"]


def test_campaign_frame_rejects_duplicates_and_missing_columns():
    recs = synthetic_records(["c0", "c1"], [0], [0])
    dup = {"tags": {**recs[1]["tags"], "proxy_exp.unit_id": "again"}, "metrics": recs[1]["metrics"],
           "status": "FINISHED"}
    runs = as_mlflow_frame(recs + [dup])
    t = recs[1]["tags"]
    with pytest.raises(ValueError, match=f"{t['proxy_exp.kind']}/c0/xs/seed 0"):
        campaign_frame(runs)
    # Restricting to this campaign's unit ids resolves it.
    ids = {r["tags"]["proxy_exp.unit_id"] for r in recs}
    assert len(campaign_frame(runs, unit_ids=ids)) == len(recs)
    with pytest.raises(ValueError, match="tags.proxy_exp.role"):
        campaign_frame(runs.drop(columns=["tags.proxy_exp.role"]))


def test_campaign_decisions_planted(report):
    m = report.methods.set_index(["method", "size"])
    assert len(report.methods) == len(STATISTICS) * len(WEIGHTINGS) + 1
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


# --------------------------------------------------------------------------- MLflow round trip
def test_load_runs_real_mlflow_store(tmp_path):
    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    exp = client.create_experiment("proxy-exp", artifact_location=str(tmp_path / "art"))
    corpora = ["c0", "c1", "c2"]
    recs = synthetic_records(corpora, [0], [0], proxy_eval=False)
    other = synthetic_records(["c0", "c1"], [0], [0], campaign="other", proxy_eval=False)[:1]
    failed = {"tags": {**recs[0]["tags"], "proxy_exp.unit_id": "crashed"}, "metrics": {}, "status": "FAILED"}
    for r in recs + other + [failed]:
        run = client.create_run(exp, tags=r["tags"])
        metrics = [Metric(k, v, 0, 0) for k, v in r["metrics"].items()]
        for i in range(0, len(metrics), 1000):
            client.log_batch(run.info.run_id, metrics=metrics[i:i + 1000])
        client.set_terminated(run.info.run_id, status=r["status"])

    runs = load_runs(uri, "proxy-exp", filter_string="tags.`proxy_exp.campaign` = 'syn'")
    assert len(runs) == len(recs) + 1  # this campaign's runs plus the failed one
    assert {"run_id", "status", "tags.proxy_exp.kind", "metrics.flops/train"} <= set(runs.columns)
    frame = campaign_frame(runs)
    assert len(frame) == len(recs)
    direct = campaign_frame(as_mlflow_frame(recs))
    key = ["kind", "corpus", "size", "role", "seed"]
    pd.testing.assert_frame_equal(frame.drop(columns="run_id").set_index(key).sort_index(axis=1),
                                  direct.drop(columns="run_id").set_index(key).sort_index(axis=1),
                                  check_dtype=False)
    rep = campaign_decisions(frame)
    assert rep.methods.set_index("method").loc["top5/freq", "decision_accuracy"] == pytest.approx(1.0)

    assert len(load_runs(uri, "proxy-exp")) == len(recs) + len(other) + 1
    with pytest.raises(ValueError, match="no experiment named 'nope'"):
        load_runs(uri, "nope")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_runs(f"sqlite:///{tmp_path / 'missing.db'}", "proxy-exp")


# --------------------------------------------------------------------------- DataDecide
DATA = Path(analysis.__file__).parent / "data" / "datadecide"


def test_datadecide_150m_reproduction():
    nll = pd.read_csv(DATA / "olmes10_nll_by_recipe_size_seed.csv")
    acc = pd.read_csv(DATA / "olmes10_accuracy_1b.csv").set_index("data")["one_b_three_seed_mean"]
    mean_nll = nll[nll["params"] == "150M"].groupby("data")["olmes10_mean_neg_ln_correct_prob_per_char"].mean()
    pairs = list(itertools.combinations(sorted(mean_nll.index), 2))
    assert len(pairs) == 300
    agree = [(mean_nll[x] < mean_nll[y]) == (acc[x] > acc[y]) for x, y in pairs]
    expected = sum(agree) / len(pairs)

    table = datadecide.datadecide_decision_accuracy()
    assert len(table) == 13 and "1B" not in set(table["size"])
    row = table.set_index("size").loc["150M"]
    print(f"DataDecide decision accuracy at 150M: {row.decision_accuracy:.4f} (independent: {expected:.4f})")
    assert row.decision_accuracy == pytest.approx(expected)
    assert 0.7 <= row.decision_accuracy <= 0.9
    assert row.compute == pytest.approx((150e6 / 1e9) ** 2)  # 6 N 100 N / (6 N_1B 100 N_1B)
    assert table["params"].is_monotonic_increasing and table["compute"].is_monotonic_increasing


def test_datadecide_validation(tmp_path, monkeypatch):
    for f in DATA.glob("*.csv"):
        (tmp_path / f.name).write_bytes(f.read_bytes())
    monkeypatch.setattr(datadecide, "_data_dir", lambda: tmp_path)
    nll, acc = datadecide.load_datadecide()
    assert nll["data"].nunique() == 25 and len(acc) == 25

    acc_path = tmp_path / "olmes10_accuracy_1b.csv"
    acc.assign(data=acc["data"].replace({"DCLM-Baseline": "DCLM-baseline"})).to_csv(acc_path, index=False)
    with pytest.raises(ValueError, match=r"only in the second: \['DCLM-baseline'\]"):
        datadecide.load_datadecide()
    acc.to_csv(acc_path, index=False)

    nll.drop(index=nll.index[0]).to_csv(tmp_path / "olmes10_nll_by_recipe_size_seed.csv", index=False)
    with pytest.raises(ValueError, match="needs seeds"):
        datadecide.load_datadecide()


def test_truth_spread_against_seed_noise():
    from analysis.campaign_report import truth_spread_note

    clear = pd.DataFrame({0: [1.0, 2.0, 3.0], 1: [1.1, 2.1, 3.1]}, index=["a", "b", "c"])
    # means 1.05, 2.05, 3.05 (sd 1.0); within-corpus sd 0.0707; SE of a difference 0.0707: every pair separated
    assert "sd 1 vs seed noise sd 0.07071 (2 target seeds); 100% of corpus pairs" in truth_spread_note(clear)
    noisy = pd.DataFrame({0: [1.0, 1.5, 1.1], 1: [1.6, 1.0, 1.4]}, index=["a", "b", "c"])
    assert "; 0% of corpus pairs" in truth_spread_note(noisy)
    assert "seed noise not measured" in truth_spread_note(clear[[0]])
