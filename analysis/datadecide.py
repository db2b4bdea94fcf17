"""Real-data check: DataDecide's single-scale decision accuracy from its released results.

The table in ``analysis/data/datadecide/`` (ODC-BY 1.0, Magnusson et al. 2025, arXiv 2504.11393;
see its README and LICENSE) holds, for 25 data recipes x 14 sizes x 3 seeds, the OLMES-10 mean of
``-ln(correct_prob_per_char)`` (lower is better), and the 1B models' OLMES-10 macro accuracy
(higher is better). Ranking the recipes at each small size by the proxy and comparing with the 1B
ranking gives the compute-vs-decision-accuracy curve of the paper's single-scale baseline (the
paper reports ~80% at 150M). Run ``python -m analysis.datadecide`` to print it.
"""
from __future__ import annotations

from importlib import resources

import pandas as pd

from analysis.decisions import decision_accuracy_seeds, rank_correlations

NLL_FILE = "olmes10_nll_by_recipe_size_seed.csv"
ACC_FILE = "olmes10_accuracy_1b.csv"
NLL_COLUMN = "olmes10_mean_neg_ln_correct_prob_per_char"
ACC_COLUMN = "one_b_three_seed_mean"
RECIPE = "data"  # the human-readable recipe name, spelled the same in both files
TARGET_SIZE = "1B"
N_RECIPES = 25
N_SEEDS = 3
TOKENS_PER_PARAM = 100.0  # DataDecide trains every size to ~100 tokens per parameter


def _data_dir():
    return resources.files("analysis") / "data" / "datadecide"


def _read(name: str, columns: list[str]) -> pd.DataFrame:
    path = _data_dir() / name
    if not path.is_file():
        raise FileNotFoundError(f"DataDecide table {path} is missing; it ships in analysis/data/datadecide/ "
                                "(reinstall the package or restore the file from the repository)")
    with path.open("r", encoding="utf-8") as f:
        df = pd.read_csv(f)
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ValueError(f"{path}: columns {missing} missing (has {list(df.columns)})")
    if df[columns].isna().any().any():
        bad = df.index[df[columns].isna().any(axis=1)].tolist()
        raise ValueError(f"{path}: NaN in rows {bad[:10]} of columns {columns}")
    return df


def load_datadecide() -> tuple[pd.DataFrame, pd.DataFrame]:
    """The two DataDecide tables, validated: ``(nll_df, acc_df)``.

    Checks (DataDecide's own ``single_scale/main.py`` asserts the same kind of invariants): 25
    recipes; exactly seeds 0, 1, 2 for every (recipe, size) and no duplicate row; one parameter
    count N per size; the 1B size present; no NaN; one 1B accuracy per recipe; the same recipe names
    in both files (column ``data``; the accuracy file's ``mix`` holds internal ids, not used).
    """
    nll = _read(NLL_FILE, [RECIPE, "params", "N", "seed_idx", NLL_COLUMN])
    acc = _read(ACC_FILE, [RECIPE, ACC_COLUMN])

    recipes = set(nll[RECIPE])
    if len(recipes) != N_RECIPES:
        raise ValueError(f"{NLL_FILE}: {len(recipes)} recipes in column {RECIPE!r}, expected {N_RECIPES}")
    dup = nll[nll.duplicated([RECIPE, "params", "seed_idx"], keep=False)]
    if not dup.empty:
        raise ValueError(f"{NLL_FILE}: duplicate (data, params, seed_idx) rows: "
                         f"{dup[[RECIPE, 'params', 'seed_idx']].drop_duplicates().values.tolist()[:10]}")
    seeds = nll.groupby([RECIPE, "params"])["seed_idx"].apply(lambda s: sorted(s.tolist()))
    wrong = seeds[seeds.apply(lambda s: s != list(range(N_SEEDS)))]
    if not wrong.empty:
        raise ValueError(f"{NLL_FILE}: every (data, params) cell needs seeds {list(range(N_SEEDS))}; these "
                         f"do not: {wrong.to_dict()}")
    cells = nll.groupby("params")[RECIPE].nunique()
    if (cells != N_RECIPES).any():
        raise ValueError(f"{NLL_FILE}: sizes without all {N_RECIPES} recipes: "
                         f"{cells[cells != N_RECIPES].to_dict()}")
    n_per_size = nll.groupby("params")["N"].nunique()
    if (n_per_size != 1).any():
        raise ValueError(f"{NLL_FILE}: sizes with several parameter counts N: "
                         f"{n_per_size[n_per_size != 1].index.tolist()}")
    if TARGET_SIZE not in set(nll["params"]):
        raise ValueError(f"{NLL_FILE}: no {TARGET_SIZE} rows; the target size is needed for compute")

    if acc[RECIPE].duplicated().any():
        raise ValueError(f"{ACC_FILE}: recipes listed twice: {acc[RECIPE][acc[RECIPE].duplicated()].tolist()}")
    only_nll = sorted(recipes - set(acc[RECIPE]))
    only_acc = sorted(set(acc[RECIPE]) - recipes)
    if only_nll or only_acc:
        raise ValueError(f"recipe names differ between {NLL_FILE} and {ACC_FILE} (column {RECIPE!r}): only in "
                         f"the first: {only_nll}; only in the second: {only_acc}. Fix the spelling so that "
                         "both use the same human-readable names")
    return nll, acc


def datadecide_decision_accuracy(ties: str = "half") -> pd.DataFrame:
    """Single-scale decision accuracy of each size below 1B against the 1B ranking.

    One row per size (13), sorted by N, columns: ``size``, ``params`` (N), ``compute``,
    ``decision_accuracy`` (ranking by the 3-seed mean NLL, lower is better, against the 1B
    3-seed mean accuracy, higher is better, over the 300 recipe pairs),
    ``decision_accuracy_per_seed_mean`` (mean over the 3 single-seed rankings), ``spearman``
    (seed-mean ranking) and ``compute_all_seeds``. ``compute`` is one small run relative to one 1B
    run, ``6 * N * 100 N / (6 * N_1B * 100 N_1B)``, as in DataDecide's plots; the seed-mean
    ranking used three runs per recipe (``compute_all_seeds`` = 3 x ``compute``), which is the
    convention of analysis.campaign_report. ``ties``: proxy-exp's tie rule or DataDecide's
    (:func:`analysis.decisions.pairwise_decision_accuracy`; the released table has no ties, so both give the same).
    """
    nll, acc = load_datadecide()
    truth = acc.set_index(RECIPE)[ACC_COLUMN]
    n_by_size = nll.groupby("params")["N"].first().astype(float)
    n_target = n_by_size[TARGET_SIZE]
    target_flops = 6.0 * n_target * TOKENS_PER_PARAM * n_target
    rows = []
    for size, n in n_by_size.drop(TARGET_SIZE).sort_values().items():
        by_seed = nll[nll["params"] == size].pivot(index=RECIPE, columns="seed_idx", values=NLL_COLUMN)
        da = decision_accuracy_seeds(by_seed, truth, pred_lower_is_better=True, truth_lower_is_better=False, ties=ties)
        rc = rank_correlations(by_seed.mean(axis=1), truth, pred_lower_is_better=True, truth_lower_is_better=False)
        compute = 6.0 * n * TOKENS_PER_PARAM * n / target_flops
        rows.append({"size": size, "params": n, "compute": compute,
                     "decision_accuracy": da["decision_accuracy"],
                     "decision_accuracy_per_seed_mean": da["decision_accuracy_per_seed_mean"],
                     "spearman": rc["spearman"], "compute_all_seeds": by_seed.shape[1] * compute})
    return pd.DataFrame(rows)


if __name__ == "__main__":
    with pd.option_context("display.width", 140, "display.float_format", lambda v: f"{v:.4g}"):
        print(datadecide_decision_accuracy().to_string(index=False))
