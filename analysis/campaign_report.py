"""A campaign's data decisions: every proxy and direct evaluation at every proxy size against the
target-size ground truth, with the compute each used and the Pareto frontier.

Compute convention (DataDecide's): compute is counted **per corpus**, relative to **one** target
training run. For a method at one proxy size it is the FLOPs needed to place one corpus (for each
proxy seed: training the proxy model plus scoring it, or plus evaluating it for direct evaluation),
averaged over the corpora, divided by the mean ``flops/train`` of the target training runs. All
seeds a method averages are counted, since its seed-mean ranking used them all.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from analysis.decisions import (decision_accuracy_seeds, mean_and_seed_accuracies, oriented_rank_correlations,
                                rank_correlations, ranks)
from analysis.held_out import held_out_selection
from analysis.pareto import pareto_frontier
from analysis.uncertainty import CI_COLUMNS, seed_bootstrap, seed_bootstrap_many, trace_seed_bootstrap
from proxy_exp.config import LOGPROB_PER_CHAR, LOWER_IS_BETTER, STATISTICS, WEIGHTINGS
from proxy_exp.evaluate.metrics import (HIGHER_IS_BETTER_PARAM, OWN_HIGHER_IS_BETTER, check_metric_name,
                                       default_direction, direction_of)
from proxy_exp.tracking import keys as K

# The direction of the truth metric eval/mean/<metric> comes from the evaluate runs (param eval.higher_is_better:
# lm-eval's higher_is_better, logged by proxy-eval): truth_direction_from_runs, passed as truth_higher_is_better.
DIRECT_EVAL = "direct eval"
# The recipes campaign at DataDecide's scale (README, setting 2): OLMo's tokenizer, 100 tokens per parameter, proxies
# of ~20M and ~150M against a ~1B target, on Slurm (point the recipes' sources at your own shards first)
CLUSTER_COMMAND = ("proxy-campaign tokenizer=olmo pretrain=datadecide executor.kind=slurm "
                   "'+model@campaign.sizes.dd_20m=dd_20m' '+model@campaign.sizes.dd_150m=dd_150m' "
                   "'+model@campaign.sizes.dd_1b=dd_1b' 'campaign.proxy_sizes=[dd_20m,dd_150m]' "
                   "campaign.target_size=dd_1b")
METHOD_COLUMNS = ["method", "family", "size", "label", "compute", "decision_accuracy",
                  "decision_accuracy_per_seed_mean", "spearman", "kendall", "n_corpora", "n_seeds"] + CI_COLUMNS + [
                  "chosen", "chosen_share"]  # held-out selection: the proxies chosen most often, their share of splits


@dataclass
class CampaignReport:
    """Result of :func:`campaign_decisions`.

    ``table``: per corpus at ``table_size``: corpus, proxy, proxy_rank, ce, ce_rank, truth,
    truth_rank (1 = best), sorted by truth rank. ``methods``: one row per (method, size), columns
    METHOD_COLUMNS; family is ``proxy``, ``ce`` (the ce_proxy baseline) or ``direct_eval``.
    ``frontier``: the Pareto-optimal rows of ``methods`` (compute down, decision accuracy up).
    """

    table: pd.DataFrame
    methods: pd.DataFrame
    frontier: pd.DataFrame
    truth: pd.Series
    primary_proxy: str
    ce_proxy: str
    truth_metric: str
    table_size: str
    target_train_flops: float
    notes: list[str] = field(default_factory=list)
    truth_higher_is_better: bool = True

    def _row(self, method: str, size: str) -> pd.Series | None:
        m = self.methods[(self.methods["method"] == method) & (self.methods["size"] == size)]
        return None if m.empty else m.iloc[0]

    def verdict_lines(self) -> list[str]:
        """One line each: the a-priori proxy and the held-out proxy choice against cross-entropy, and the held-out
        choice against small-scale direct evaluation, at the cheapest proxy size, with 95% CIs and compute; a
        difference is called only where the intervals do not overlap."""
        plain = self.methods[~self.methods["size"].astype(str).str.contains("@")]
        if plain.empty:
            return []
        size = plain.sort_values("compute")["size"].iloc[0]
        ho = plain[(plain["family"] == "held_out") & (plain["size"] == size)]
        chosen = ho.iloc[0] if not ho.empty else None
        ce, primary, direct = (self._row(m, size) for m in (self.ce_proxy, self.primary_proxy, DIRECT_EVAL))

        def desc(name: str, r: pd.Series) -> str:
            ci = f" [{r.da_lo:.2f}, {r.da_hi:.2f}]" if np.isfinite(r.da_lo) else " [no CI]"
            return f"{name} {r.decision_accuracy:.2f}{ci} at compute {r.compute:.3g}"

        def verdict(a_name: str, a: pd.Series | None, b_name: str, b: pd.Series | None) -> str | None:
            if a is None or b is None or not (np.isfinite(a.decision_accuracy) and np.isfinite(b.decision_accuracy)):
                return None
            if np.isfinite(a.da_lo) and np.isfinite(b.da_hi) and a.da_lo > b.da_hi:
                word = f"{a_name} decides better"
            elif np.isfinite(b.da_lo) and np.isfinite(a.da_hi) and b.da_lo > a.da_hi:
                word = f"{b_name} decides better"
            else:
                word = "no difference beyond the 95% CIs"
            return f"verdict @ {size}: {desc(a_name, a)} vs {desc(b_name, b)}: {word}"

        held = f"held-out proxy choice ({chosen.method})" if chosen is not None else ""
        lines = [verdict(f"proxy {self.primary_proxy} (a priori)", primary, "cross-entropy", ce),
                 verdict(held, chosen, "cross-entropy", ce) if chosen is not None else None,
                 verdict(held or f"proxy {self.primary_proxy}", chosen if chosen is not None else primary,
                         "direct evaluation", direct)]
        lines = [line for line in lines if line]
        if lines and all(line.endswith("no difference beyond the 95% CIs") for line in lines):
            n, compute = len(self.truth), plain.loc[plain["size"] == size, "compute"].min()
            lines.append(f"scale: at this campaign's scale the methods cannot be told apart ({n} corpora, "
                         f"{n * (n - 1) // 2} pairs; proxies at {compute:.3g} "
                         "of a target run): the paper's effect needs ~1B targets, proxies 100-1000x smaller and "
                         f"recipes no single factor orders; the same campaign at cluster scale: {CLUSTER_COMMAND}")
        return lines

    def summary_text(self) -> str:
        """A plain-text summary: ranking table, headline decision accuracies, their compute, best proxy."""
        def line(name: str, r: pd.Series | None) -> str:
            if r is None:
                return f"  {name}: not measured"
            ci = (f" [{r.da_lo:.2f}, {r.da_hi:.2f}]" if np.isfinite(getattr(r, "da_lo", np.nan)) else "")
            return (f"  {name}: decision accuracy {r.decision_accuracy:.3f}{ci} "
                    f"(per-seed mean {r.decision_accuracy_per_seed_mean:.3f}), spearman {r.spearman:+.3f}, "
                    f"compute {r.compute:.3g} x one target run, {int(r.n_corpora)} corpora, {int(r.n_seeds)} seed(s)")

        out = [f"Campaign decisions over {len(self.truth)} corpora. Truth: eval/mean/{self.truth_metric} "
               f"of the target models (seed mean, {'higher' if self.truth_higher_is_better else 'lower'} is "
               f"better); target training run = "
               f"{self.target_train_flops:.3g} FLOPs.",
               f"Ranking at proxy size {self.table_size!r} (1 = best); proxy = {self.primary_proxy}, "
               f"ce = {self.ce_proxy}:",
               self.table.to_string(index=False, float_format=lambda v: f"{v:.4f}"),
               "(decision accuracy [95% bootstrap CI over traces within tasks and over seeds; none where "
               "nothing can be resampled])", ""]
        checkpointed = self.methods[self.methods["size"].astype(str).str.contains("@")]
        sizes = sorted(set(self.methods["size"]) - set(checkpointed["size"]), key=lambda s: float(
            self.methods.loc[self.methods["size"] == s, "compute"].min()))
        for size in sizes:
            out.append(f"At proxy size {size!r}:")
            out.append(line(f"primary proxy {self.primary_proxy}", self._row(self.primary_proxy, size)))
            out.append(line(f"cross-entropy {self.ce_proxy}", self._row(self.ce_proxy, size)))
            out.append(line(f"direct eval ({self.truth_metric})", self._row(DIRECT_EVAL, size)))
            for r in self.methods[(self.methods["family"] == "held_out") & (self.methods["size"] == size)].itertuples():
                out.append(f"  {r.method}: decision accuracy {r.decision_accuracy:.3f} [{r.da_lo:.2f}, {r.da_hi:.2f}] "
                           f"over {int(r.n_corpora) * (int(r.n_corpora) - 1) // 2} held-out pairs, each decided by a "
                           f"choice made on the other corpora (most often {r.chosen}, {r.chosen_share:.0%} of splits)")
        out += ["", *self.verdict_lines()]
        if not checkpointed.empty:
            out.append(f"In-loop checkpoints: {checkpointed['size'].nunique()} (size@step) points x "
                       f"{checkpointed['method'].nunique()} proxies, compute "
                       f"{checkpointed['compute'].min():.3g}-{checkpointed['compute'].max():.3g} (methods.csv, frontier)")
        proxies = self.methods[self.methods["family"].isin(["proxy", "ce"])].dropna(subset=["decision_accuracy"])
        if not proxies.empty:
            best = proxies.sort_values(["decision_accuracy", "compute", "spearman"],
                                       ascending=[False, True, False]).iloc[0]
            out += ["", line(f"best proxy (picked on these same corpora, so optimistic) {best.label}", best)]
        out += ["", "Pareto frontier (compute relative to one target run -> decision accuracy):"]
        out += [f"  {r.label}: {r.compute:.3g} -> {r.decision_accuracy:.3f}" for r in self.frontier.itertuples()]
        if self.notes:
            out += ["", "Notes:"] + [f"  {n}" for n in self.notes]
        return "\n".join(out)


def _split_proxy(name: str, arg: str) -> tuple[str, str]:
    parts = name.split("/")
    if len(parts) != 2 or parts[0] not in STATISTICS or parts[1] not in WEIGHTINGS:
        raise ValueError(f"{arg}={name!r}: expected '<statistic>/<weighting>' with statistic in "
                         f"{STATISTICS} and weighting in {WEIGHTINGS}")
    return parts[0], parts[1]


def _rows(frame: pd.DataFrame, kind: str, role: str) -> pd.DataFrame:
    return frame[(frame["kind"] == kind) & (frame["role"] == role)]


def _require(frame: pd.DataFrame, cols: list[str], what: str) -> None:
    missing = [c for c in cols if c not in frame.columns]
    if missing:
        raise ValueError(f"campaign_decisions: {what} lack metrics {missing}; was the campaign run to "
                         "completion, and the frame built with analysis.runs.campaign_frame?")


def _by_seed(rows: pd.DataFrame, col: str, size: str, notes: list[str]) -> pd.DataFrame:
    """corpus x seed values of ``col``; corpora missing a seed or a value are dropped (with a note)."""
    table = rows.pivot(index="corpus", columns="seed", values=col)
    incomplete = table.index[table.isna().any(axis=1)].tolist()
    if incomplete:
        notes.append(f"{col} @ {size}: corpora {incomplete} lack a value for some seed and were left out")
    return table.dropna()


def _compute(rows: pd.DataFrame, cost_col: str, corpora: pd.Index, target_flops: float) -> float:
    """Per-corpus FLOPs (train + ``cost_col`` summed over seeds), averaged over ``corpora``."""
    sub = rows[rows["corpus"].isin(corpora)]
    if sub[[K.FLOPS_TRAIN, cost_col]].isna().any().any():
        raise ValueError(f"campaign_decisions: runs {sub.loc[sub[['flops/train', cost_col]].isna().any(axis=1), 'run_id'].tolist()} "
                         f"lack flops/train or {cost_col}; compute cannot be counted")
    per_corpus = (sub[K.FLOPS_TRAIN] + sub[cost_col]).groupby(sub["corpus"]).sum()
    return float(per_corpus.mean() / target_flops)


def _checkpoint_rows(checkpoints: pd.DataFrame, scores: pd.DataFrame, keys: list[str], names: list[str],
                     lower: list[bool], ce_proxy: str, truth: pd.Series, truth_by_seed: pd.DataFrame,
                     truth_lower: bool, target_flops: float, n_boot: int, boot_seed: int, notes: list[str]) -> list:
    """Methods ``<proxy> @ <size>@<step>`` from the in-loop proxies of the proxy training runs."""
    _require(checkpoints, ["corpus", "size", "seed", "step", "fraction"], "checkpoint frame")
    rows = []
    for (size, step), sub in checkpoints.groupby(["size", "step"], sort=True):
        final = scores[scores["size"] == size]
        want = final[["corpus", "seed"]].drop_duplicates()
        have = sub[["corpus", "seed"]].drop_duplicates()
        if len(have.merge(want)) < len(want):
            continue  # a checkpoint some run lacks (a different schedule or an unfinished run): not comparable
        sub = sub.merge(final[["corpus", "seed", K.FLOPS_TRAIN, K.FLOPS_SCORE]], on=["corpus", "seed"])
        flops = (sub[K.FLOPS_TRAIN] * sub["fraction"] + sub[K.FLOPS_SCORE]).groupby(sub["corpus"]).sum()
        compute = float(flops.mean() / target_flops)
        label_size = f"{size}@{int(step)}"
        present = [(key, method, low) for key, method, low in zip(keys, names, lower) if key in sub.columns]
        wide = sub.set_index(["corpus", "seed"])[[key for key, _, _ in present]].unstack("seed")  # one reshape
        by_seeds = [wide[key].dropna() for key, _, _ in present]
        cis = seed_bootstrap_many(by_seeds, [low for _, _, low in present], truth_by_seed, truth_lower, n_boot,
                                  boot_seed)  # all proxies of the checkpoint resampled together
        evaluated = _evaluate_methods(by_seeds, truth, [low for _, _, low in present], truth_lower)
        for (key, method, low), ev, ci in zip(present, evaluated, cis):
            rows.append({"method": method, "family": "ce" if method == ce_proxy else "proxy", "size": label_size,
                         "label": f"{method} @ {label_size}", "compute": compute, **ev, **ci})
    if not rows:
        notes.append("checkpoints were given but no checkpoint step is shared by every proxy run of a size")
    return rows


def _held_out_rows(oriented: pd.DataFrame, truth: pd.Series, size: str, compute: float, n_boot: int, seed: int,
                   notes: list[str], prefer: list[str]) -> list[dict]:
    """The single best proxy and the 3-sparse combination chosen out of sample (analysis/held_out.py: each corpus
    pair decided by a choice made on the other corpora), as methods at ``size`` with the proxies' compute."""
    oriented = oriented.dropna(axis=1, how="any")
    if len(oriented.index.intersection(truth.index)) < 4:
        notes.append(f"no held-out proxy selection at {size}: it needs >= 4 corpora")
        return []
    res = held_out_selection(oriented, truth, k=3, n_boot=n_boot, seed=seed, prefer=prefer)
    out = []
    for r in res.table.itertuples():
        out.append({"method": r.method, "family": "held_out", "size": size, "label": f"{r.method} @ {size}",
                    "compute": compute, "decision_accuracy": r.decision_accuracy,
                    "decision_accuracy_per_seed_mean": np.nan, "spearman": np.nan, "kendall": np.nan,
                    "n_corpora": len(oriented), "n_seeds": np.nan, "da_lo": r.da_lo, "da_hi": r.da_hi,
                    "spearman_lo": np.nan, "spearman_hi": np.nan, "chosen": r.chosen,
                    "chosen_share": r.chosen_share})
    return out


def truth_spread_note(truth_by_seed: pd.DataFrame) -> str:
    """Is there a ranking to predict? The spread of the truth between corpora against its seed noise.

    With >= 2 target seeds: the standard deviation of the corpus means, the pooled within-corpus seed
    standard deviation, and the share of corpus pairs whose mean difference exceeds twice its standard
    error (pooled seed variance, ``2 / n_seeds``). With one seed the noise cannot be measured: said so.
    """
    t = truth_by_seed.dropna()
    means = t.mean(axis=1)
    if t.shape[1] < 2:
        return (f"truth spread between corpora: sd {means.std(ddof=1):.4g}; seed noise not measured (1 target seed: "
                "add campaign.target_seeds to check that the corpora differ by more than noise)")
    noise = float(np.sqrt(t.var(axis=1, ddof=1).mean()))
    i, j = np.triu_indices(len(means), k=1)
    se = noise * np.sqrt(2.0 / t.shape[1])
    diff = np.abs(means.to_numpy()[i] - means.to_numpy()[j])
    sep = float(np.mean(diff > 2 * se)) if se > 0 else 1.0
    return (f"truth spread between corpora: sd {means.std(ddof=1):.4g} vs seed noise sd {noise:.4g} "
            f"({t.shape[1]} target seeds); {sep:.0%} of corpus pairs differ by more than 2 standard errors")


def _evaluate_method(by_seed: pd.DataFrame, truth: pd.Series, lower: bool, truth_lower: bool) -> dict:
    common = by_seed.index.intersection(truth.index)
    if len(common) < 2:
        return {"decision_accuracy": np.nan, "decision_accuracy_per_seed_mean": np.nan,
                "spearman": np.nan, "kendall": np.nan, "n_corpora": len(common), "n_seeds": by_seed.shape[1]}
    by_seed = by_seed.loc[common]
    da = decision_accuracy_seeds(by_seed, truth, lower, truth_lower)  # checks the values: no NaN, no duplicate
    rc = oriented_rank_correlations(by_seed.mean(axis=1).to_numpy(float) * (-1.0 if lower else 1.0),
                                    truth.loc[common].to_numpy(float) * (-1.0 if truth_lower else 1.0))
    return {"decision_accuracy": da["decision_accuracy"],
            "decision_accuracy_per_seed_mean": da["decision_accuracy_per_seed_mean"],
            "spearman": rc["spearman"], "kendall": rc["kendall"], "n_corpora": len(common),
            "n_seeds": by_seed.shape[1]}


def _evaluate_methods(by_seeds: list[pd.DataFrame], truth: pd.Series, lowers: list[bool],
                      truth_lower: bool) -> list[dict]:
    """:func:`_evaluate_method` of each of ``by_seeds`` (corpus x seed frames), the same numbers: methods over the
    same corpora and seeds (the 80 proxies of a size or checkpoint) are ranked in one array; a group with a NaN, a
    repeated corpus or fewer than 2 corpora in common with the truth goes through :func:`_evaluate_method` (its
    checks raise the same errors)."""
    out: list[dict | None] = [None] * len(by_seeds)
    groups: dict[tuple, list[int]] = {}
    for i, b in enumerate(by_seeds):
        groups.setdefault((tuple(b.index), tuple(b.columns)), []).append(i)
    t_all = truth.astype(float)
    for (index, _), members in groups.items():
        first = by_seeds[members[0]]
        common = first.index.intersection(truth.index)
        rows = first.index.get_indexer(common)
        vals = np.stack([by_seeds[i].to_numpy(dtype=float)[rows] for i in members], axis=2)  # [corpus, seed, method]
        t = t_all.loc[common].to_numpy(dtype=float)
        if (len(common) < 2 or first.index.duplicated().any() or truth.index.duplicated().any()
                or np.isnan(vals).any() or np.isnan(t).any()):
            for i in members:
                out[i] = _evaluate_method(by_seeds[i], truth, lowers[i], truth_lower)
            continue
        sign = np.where([lowers[i] for i in members], -1.0, 1.0)
        mean = vals.mean(axis=1) * sign  # [corpus, method], oriented
        seeds = vals * sign  # [corpus, seed, method]
        t = -t if truth_lower else t
        n_seeds = vals.shape[1]
        scores = mean_and_seed_accuracies(mean, seeds, t)  # as decision_accuracy_seeds computes them, all at once
        for m, i in enumerate(members):
            rc = oriented_rank_correlations(mean[:, m], t)
            out[i] = {"decision_accuracy": float(scores[m, 0]),
                      "decision_accuracy_per_seed_mean": float(np.mean([float(v) for v in scores[m, 1:]])),
                      "spearman": rc["spearman"], "kendall": rc["kendall"], "n_corpora": len(common),
                      "n_seeds": n_seeds}
    return out  # type: ignore[return-value]


def campaign_decisions(frame: pd.DataFrame, primary_proxy: str = "top5/freq", ce_proxy: str = "ce/uniform",
                       truth_metric: str = LOGPROB_PER_CHAR, table_size: str | None = None,
                       per_trace: dict | None = None, n_boot: int = 500, boot_seed: int = 0,
                       checkpoints: pd.DataFrame | None = None,
                       truth_higher_is_better: bool | None = None) -> CampaignReport:
    """Decision accuracy, rank correlation and compute of every method of a campaign.

    ``frame`` is :func:`analysis.runs.campaign_frame`'s output. Truth: evaluate runs of role target,
    ``eval/mean/<truth_metric>`` (any metric the evaluate runs log: ``evaluate.primary_metric``), averaged over
    target seeds per corpus; ``truth_higher_is_better``: its direction, as the evaluate runs logged it
    (:func:`truth_direction_from_runs`; None: lm-eval's metric registry's default, with a note). Methods: each of the 80
    proxies (score runs of role proxy) at each proxy size, ranked by the seed mean, with the
    proxy's direction from ``LOWER_IS_BETTER``; and direct evaluation at each proxy size (evaluate
    runs of role proxy, same metric as the truth). ``table_size``: the proxy size shown in the
    ranking table; default the proxy size with the largest training compute.
    ``per_trace``: ``{(corpus, size, seed): per-trace proxies}`` (a score run's per_trace.parquet) for the
    confidence intervals over traces (:mod:`analysis.uncertainty`); without it, proxies get CIs over seeds
    only where there are seeds (from their per-seed values), and direct evaluation always over seeds.
    ``checkpoints``: in-loop proxies of the proxy training runs (columns corpus, size, seed, step, fraction =
    step / last step, and ``proxy/<s>/<w>``): every proxy at every checkpoint step present for all corpora
    and seeds of a size becomes a method of size ``<size>@<step>``, its compute the training up to that step
    plus one scoring pass (the same traces as the final scoring, so the same FLOPs as ``flops/score``).
    """
    for col in ("kind", "corpus", "size", "role", "seed", "run_id"):
        if col not in frame.columns:
            raise ValueError(f"campaign_decisions: column {col!r} missing; build the frame with "
                             "analysis.runs.campaign_frame")
    _split_proxy(primary_proxy, "primary_proxy")
    _split_proxy(ce_proxy, "ce_proxy")
    check_metric_name(truth_metric, "truth_metric (evaluate.primary_metric)")
    truth_col = K.eval_key(K.MEAN, truth_metric)
    notes: list[str] = []
    truth_higher_is_better = _truth_direction(truth_metric, truth_higher_is_better, notes)
    truth_lower = not truth_higher_is_better
    target_eval, truth, truth_by_seed = _truth(frame, truth_col, notes)
    target_flops = _target_flops(frame, target_eval)

    scores = _rows(frame, "score", "proxy")
    if scores.empty:
        raise ValueError("campaign_decisions: no finished score run of role proxy")
    keys = [K.proxy_key(s, w) for s in STATISTICS for w in WEIGHTINGS]
    _require(scores, keys + [K.FLOPS_TRAIN, K.FLOPS_SCORE], "proxy score runs")
    names = [K.parse_proxy_key(k)[1] for k in keys]
    lower = [LOWER_IS_BETTER[n.split("/")[0]] for n in names]
    rows: list[dict] = []
    for size, sub in scores.groupby("size", sort=True):
        rows += _proxy_rows(size, sub, keys, names, lower, primary_proxy, ce_proxy, truth, truth_by_seed, truth_lower,
                            target_flops, per_trace, n_boot, boot_seed, notes)
    if checkpoints is not None and not checkpoints.empty:
        rows += _checkpoint_rows(checkpoints, scores, keys, names, lower, ce_proxy, truth, truth_by_seed, truth_lower,
                                 target_flops, n_boot, boot_seed, notes)
    rows += _direct_eval_rows(frame, truth_col, truth, truth_by_seed, truth_lower, target_flops, n_boot, boot_seed,
                              notes)
    methods = pd.DataFrame(rows, columns=METHOD_COLUMNS)

    if table_size is None:
        table_size = str(scores.groupby("size")[K.FLOPS_TRAIN].mean().idxmax())
    table = _ranking_table(scores, table_size, primary_proxy, ce_proxy, truth, truth_lower)
    only_truth = sorted(set(truth.index) - set(scores["corpus"]))
    if only_truth:
        notes.append(f"corpora {only_truth} have a truth but no proxy score runs")
    notes += mixed_precision_notes(frame)
    return CampaignReport(table=table, methods=methods, frontier=pareto_frontier(methods), truth=truth,
                          primary_proxy=primary_proxy, ce_proxy=ce_proxy, truth_metric=truth_metric,
                          table_size=table_size, target_train_flops=target_flops, notes=notes,
                          truth_higher_is_better=bool(truth_higher_is_better))


def mixed_precision_notes(frame: pd.DataFrame) -> list[str]:
    """A note for each kind (score, evaluate) whose runs in ``frame`` ran their models in more than one dtype: a
    campaign run partly on CPU (fp32) and partly on GPUs (bf16) with ``model.dtype=auto`` compares results of two
    precisions (its unit ids, planned on the login node, cannot tell them apart)."""
    notes = []
    if "dtype" not in frame.columns:
        return notes
    for kind in ("score", "evaluate"):
        counts = frame.loc[frame["kind"] == kind, "dtype"].dropna().value_counts()
        if len(counts) > 1:
            mix = ", ".join(f"{n} in {dtype}" for dtype, n in counts.sort_index().items())
            notes.append(f"the {kind} runs mixed precisions ({mix}): their results are compared across dtypes; "
                         f"set campaign.sizes.<size>.dtype (e.g. bfloat16): the score and evaluate units then "
                         "get new ids and run again, all in that precision")
    return notes


def _truth_direction(truth_metric: str, given: bool | None, notes: list[str]) -> bool:
    """Whether a higher truth is better: as the evaluate runs logged it (``given``), else by lm-eval's metric
    registry or proxy-exp's own metrics (with a note); ValueError when nothing knows."""
    if given is not None:
        return bool(given)
    higher = default_direction(truth_metric)
    if higher is None:
        raise ValueError(f"truth_metric={truth_metric!r}: whether a higher {truth_metric} is better is unknown: "
                         "neither lm-eval's metric registry nor proxy-exp's own metrics know it; pass the "
                         "direction the evaluate runs logged (truth_direction_from_runs)")
    if truth_metric not in OWN_HIGHER_IS_BETTER:  # proxy-exp's own metrics have their direction by definition
        notes.append(f"truth direction of {truth_metric} from lm-eval's metric registry "
                     f"({'higher' if higher else 'lower'} is better), not from the evaluate runs")
    return bool(higher)


def _truth(frame: pd.DataFrame, truth_col: str, notes: list[str]) -> tuple[pd.DataFrame, pd.Series, pd.DataFrame]:
    """The target evaluate runs, the truth per corpus (seed mean) and per corpus and seed; notes its spread."""
    target_eval = _rows(frame, "evaluate", "target")
    if target_eval.empty:
        raise ValueError("campaign_decisions: no finished evaluate run of role target; the ground truth "
                         "needs the target-size models evaluated")
    _require(target_eval, [truth_col], "target evaluate runs")
    truth = target_eval.groupby("corpus")[truth_col].mean()
    truth_by_seed = target_eval.pivot(index="corpus", columns="seed", values=truth_col)
    if truth.isna().any():
        raise ValueError(f"campaign_decisions: {truth_col} is NaN for target corpora "
                         f"{truth.index[truth.isna()].tolist()}")
    if len(truth) < 2:
        raise ValueError(f"campaign_decisions: the truth covers {len(truth)} corpus; decisions need >= 2")
    notes.append(truth_spread_note(truth_by_seed))
    return target_eval, truth, truth_by_seed


def _target_flops(frame: pd.DataFrame, target_eval: pd.DataFrame) -> float:
    """The FLOPs of one target training run (the train runs', else as the evaluate runs recorded them)."""
    target_train = _rows(frame, "train", "target")
    flops_source = target_train if not target_train.empty else target_eval
    _require(flops_source, [K.FLOPS_TRAIN], "target runs")
    target_flops = float(flops_source[K.FLOPS_TRAIN].mean())
    if not target_flops > 0:
        raise ValueError(f"campaign_decisions: target flops/train is {target_flops}; compute needs it > 0")
    return target_flops


def _proxy_rows(size: str, sub: pd.DataFrame, keys: list[str], names: list[str], lower: list[bool],
                primary_proxy: str, ce_proxy: str, truth: pd.Series, truth_by_seed: pd.DataFrame, truth_lower: bool,
                target_flops: float, per_trace: dict | None, n_boot: int, boot_seed: int,
                notes: list[str]) -> list[dict]:
    """Every proxy at one proxy size (CIs over traces within tasks where per-trace tables exist, else over seeds),
    and the proxy chosen out of sample at that size."""
    traces_here = {(c, sd): df for (c, sz, sd), df in (per_trace or {}).items() if sz == size}
    cis = None
    if traces_here:
        try:
            cis = trace_seed_bootstrap(traces_here, names, lower, truth_by_seed, truth_lower, n_boot, boot_seed)
        except ValueError as e:
            notes.append(f"no trace bootstrap at {size}: {e}")
    rows, oriented = [], {}
    by_seeds = [_by_seed(sub, key, size, notes) for key in keys]
    if cis is None:  # CIs over seeds, all proxies resampled together
        seed_cis = seed_bootstrap_many(by_seeds, lower, truth_by_seed, truth_lower, n_boot, boot_seed)
    for m, (method, low, by_seed, ev) in enumerate(zip(names, lower, by_seeds,
                                                        _evaluate_methods(by_seeds, truth, lower, truth_lower))):
        ci = cis.loc[method].to_dict() if cis is not None else seed_cis[m]
        compute = _compute(sub, K.FLOPS_SCORE, by_seed.index, target_flops)
        rows.append({"method": method, "family": "ce" if method == ce_proxy else "proxy", "size": size,
                     "label": f"{method} @ {size}", "compute": compute, **ev, **ci})
        oriented[method] = -by_seed.mean(axis=1) if low else by_seed.mean(axis=1)
    return rows + _held_out_rows(pd.DataFrame(oriented), -truth if truth_lower else truth, size, compute, n_boot,
                                 boot_seed, notes, prefer=[primary_proxy])


def _direct_eval_rows(frame: pd.DataFrame, truth_col: str, truth: pd.Series, truth_by_seed: pd.DataFrame,
                      truth_lower: bool, target_flops: float, n_boot: int, boot_seed: int,
                      notes: list[str]) -> list[dict]:
    """Small-scale direct evaluation: the proxy models' own evaluate runs, on the truth's metric, per proxy size."""
    proxy_eval = _rows(frame, "evaluate", "proxy")
    if proxy_eval.empty:
        return []
    _require(proxy_eval, [truth_col, K.FLOPS_TRAIN, K.FLOPS_EVAL], "proxy evaluate runs")
    rows = []
    for size, sub in proxy_eval.groupby("size", sort=True):
        by_seed = _by_seed(sub, truth_col, size, notes)
        rows.append({"method": DIRECT_EVAL, "family": "direct_eval", "size": size, "label": f"{DIRECT_EVAL} @ {size}",
                     "compute": _compute(sub, K.FLOPS_EVAL, by_seed.index, target_flops),
                     **_evaluate_method(by_seed, truth, truth_lower, truth_lower),
                     **seed_bootstrap(by_seed, truth_lower, truth_by_seed, truth_lower, n_boot, boot_seed)})
    return rows


def _ranking_table(scores: pd.DataFrame, table_size: str, primary_proxy: str, ce_proxy: str, truth: pd.Series,
                   truth_lower: bool) -> pd.DataFrame:
    """Per corpus at ``table_size``: the primary proxy, cross-entropy and truth with their ranks (1 = best)."""
    table_rows = scores[scores["size"] == table_size]
    if table_rows.empty:
        raise ValueError(f"campaign_decisions: table_size={table_size!r} has no proxy score runs; "
                         f"sizes: {sorted(scores['size'].unique())}")
    (p_stat, p_weighting), (c_stat, c_weighting) = _split_proxy(primary_proxy, "primary_proxy"), _split_proxy(
        ce_proxy, "ce_proxy")
    p_vals = _by_seed(table_rows, K.proxy_key(p_stat, p_weighting), table_size, []).mean(axis=1)
    c_vals = _by_seed(table_rows, K.proxy_key(c_stat, c_weighting), table_size, []).mean(axis=1)
    corpora = truth.index.intersection(p_vals.index).intersection(c_vals.index)
    table = pd.DataFrame({"corpus": corpora,
                          "proxy": p_vals.loc[corpora].to_numpy(),
                          "proxy_rank": ranks(p_vals.loc[corpora], LOWER_IS_BETTER[p_stat]).to_numpy(),
                          "ce": c_vals.loc[corpora].to_numpy(),
                          "ce_rank": ranks(c_vals.loc[corpora], LOWER_IS_BETTER[c_stat]).to_numpy(),
                          "truth": truth.loc[corpora].to_numpy(),
                          "truth_rank": ranks(truth.loc[corpora], truth_lower).to_numpy()})
    return table.sort_values(["truth_rank", "corpus"]).reset_index(drop=True)


def truth_direction_from_runs(runs: pd.DataFrame, truth_metric: str, unit_ids=None) -> bool | None:
    """The direction of ``truth_metric`` that a campaign's evaluate runs logged (param ``eval.higher_is_better``:
    lm-eval's higher_is_better), from an ``mlflow.search_runs`` frame (:func:`analysis.runs.load_runs`), optionally
    only the runs of ``unit_ids``; None when none logged it. ValueError when the runs disagree."""
    kind = runs.get(K.tag_column(K.KIND), pd.Series(None, index=runs.index, dtype=object))
    ev = runs[kind == "evaluate"]
    if unit_ids is not None and K.tag_column(K.UNIT_ID) in ev.columns:
        ev = ev[ev[K.tag_column(K.UNIT_ID)].isin(set(unit_ids))]
    col = "params." + HIGHER_IS_BETTER_PARAM
    return direction_of(ev[col] if col in ev.columns else [], truth_metric)[0]
