"""Settings 1 and 3 through MLflow: a population of models and a run's in-loop history, read back from a real
MLflow store and turned into the model-selection and forecast reports (library and `proxy-analyze`).

The values are planted (so the expected outcome is known), the store, the runs and the entry point are real.
"""

import json

import numpy as np
import pandas as pd
import pytest

from analysis.forecast import power_law, sigmoid
from analysis.population import OVERALL, model_selection_report, population_from_runs, resolve_task_map
from analysis.runs import load_runs
from proxy_exp import tracking
from proxy_exp.config import STATISTICS, TrackingConfig, WEIGHTINGS
from proxy_exp.evaluate.metrics import HIGHER_IS_BETTER_PARAM
from tests.helpers import run_cli

EXP = "pop"
TRACE_TASKS = ["gsm8k", "mbpp"]
DOWN_TASKS = ["arc_easy", "hellaswag", "piqa", "sciq"]
N_MODELS = 8


def _proxies(rng, quality: float, informative: str) -> dict:
    """80 proxy values: ``informative`` follows the model's quality, every other proxy is noise."""
    out = {}
    for s in STATISTICS:
        for w in WEIGHTINGS:
            out[f"{s}/{w}"] = float(rng.normal())
    out[informative] = float(quality)
    return out


GEN_TASKS = ["gsm8k", "minerva_math", "drop"]  # generative downstream tasks (lm-eval names), beside DOWN_TASKS
# the evaluate runs' eval.higher_is_better param, as proxy-eval logs it from lm-eval's higher_is_better
DIRECTIONS = json.dumps({"acc": True, "logprob_per_char": True, "exact_match_strict-match": True,
                         "exact_match_flexible-extract": True, "bits_per_byte": False})


def _generative_metrics(rng, quality: float) -> dict:
    """eval/<task>/exact_match_strict-match (follows quality), exact_match_flexible-extract (noise) and a
    lower-is-better bits_per_byte (falls with quality) on the generative tasks."""
    out = {}
    for t in GEN_TASKS:
        out[f"eval/{t}/exact_match_strict-match"] = 0.1 + 0.05 * quality + rng.normal(0, 0.005)
        out[f"eval/{t}/exact_match_flexible-extract"] = float(rng.uniform())
        out[f"eval/{t}/bits_per_byte"] = 2.0 - 0.1 * quality + rng.normal(0, 0.005)
        out[f"eval/{t}/n"] = 50.0
    return out


def _log(root, name, tags, params, metrics, step_metrics=None):
    cfg = TrackingConfig(experiment=EXP)
    with tracking.Run(cfg, str(root), name, tags) as run:
        run.log_params(params)
        run.log_metrics(metrics)
        for step, ms in (step_metrics or {}).items():
            run.log_metrics(ms, step=step)
        return run.run_id


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("pop")
    return root, _build_store(root)


def _build_store(root):
    """8 models: score runs (80 overall proxies + 80 per trace task) and evaluate runs (4 downstream tasks).

    Downstream score = quality + small noise; the overall proxy top1/uniform = quality, the gsm8k proxy
    rank/uniform = -quality (rank is lower-is-better, so it is informative too); every other proxy, ce/uniform
    included, is noise.
    """
    rng = np.random.default_rng(7)
    gen_rng = np.random.default_rng(11)  # the generative metrics' own noise: the other values stay as they were
    quality = rng.permutation(N_MODELS).astype(float)
    for m in range(N_MODELS):
        ref = f"/models/m{m}/model"
        metrics = {f"proxy/{k}": v for k, v in _proxies(rng, quality[m], "top1/uniform").items()}
        for t in TRACE_TASKS:
            planted = "rank/uniform" if t == "gsm8k" else "top1/uniform"
            value = -quality[m] if t == "gsm8k" else quality[m]  # rank: lower is better -> -quality is informative
            metrics.update({f"proxy_task/{t}/{k}": v for k, v in _proxies(rng, value, planted).items()})
        _log(root, f"score m{m}", tracking.unit_tags("score", f"s{m}", ""),
             {"model.path": ref, "model.ref": ref, "traces.name": "mini", "traces.tasks": str(TRACE_TASKS),
              "n_params": 1000 * (m + 1)}, metrics)
        ev = {f"eval/{t}/logprob_per_char": quality[m] + rng.normal(0, 0.1) for t in DOWN_TASKS}
        ev.update({f"eval/{t}/acc": 0.25 + 0.01 * quality[m] for t in DOWN_TASKS})
        ev["eval/mean/logprob_per_char"] = float(np.mean([ev[f"eval/{t}/logprob_per_char"] for t in DOWN_TASKS]))
        ev.update(_generative_metrics(gen_rng, quality[m]))
        _log(root, f"evaluate m{m}", tracking.unit_tags("evaluate", f"e{m}", ""),
             {"model.path": ref, "model.ref": ref, "evaluate.limit": 100, HIGHER_IS_BETTER_PARAM: DIRECTIONS}, ev)
    # a newer score run of model 0 (same traces, another set name): filtered out by traces=mini, else the latest wins
    _log(root, "score m0 again", tracking.unit_tags("score", "s0b", ""),
         {"model.path": "/models/m0/model", "model.ref": "/models/m0/model", "traces.name": "rerun",
          "traces.tasks": str(TRACE_TASKS)},
         {f"proxy/{k}": 0.0 for k in _proxies(rng, 0.0, "top1/uniform")})
    # an evaluated model that was never scored: reported, left out
    _log(root, "evaluate lonely", tracking.unit_tags("evaluate", "e-lonely", ""), {"model.path": "/models/lonely"},
         {f"eval/{t}/logprob_per_char": 0.0 for t in DOWN_TASKS})
    return quality


def _runs(root):
    return load_runs(tracking.tracking_uri(TrackingConfig(experiment=EXP), str(root)), EXP)


def test_population_joins_score_and_evaluate_runs(store):
    root, quality = store
    pop = population_from_runs(_runs(root), traces="mini")
    assert sorted(pop.truth["model"].unique()) == [f"m{m}" for m in range(N_MODELS)]
    assert pop.task_map == {t: OVERALL for t in DOWN_TASKS}  # no downstream task is a trace task
    assert pop.proxies["proxy"].nunique() == 80 and len(pop.proxies) == 80 * N_MODELS * len(DOWN_TASKS)
    top1 = pop.proxies[(pop.proxies["proxy"] == "top1/uniform") & (pop.proxies["task"] == "piqa")]
    assert dict(zip(top1["model"], top1["value"])) == {f"m{m}": quality[m] for m in range(N_MODELS)}
    assert any("without a score run" in n for n in pop.notes)
    assert pop.models["n_params"].tolist() == [1000 * (m + 1) for m in range(N_MODELS)]
    # without the trace-set filter the newer run of m0 wins, and the older one is reported
    pop_all = population_from_runs(_runs(root))
    m0 = pop_all.proxies[(pop_all.proxies["model"] == "m0") & (pop_all.proxies["proxy"] == "top1/uniform")]
    assert (m0["value"] == 0.0).all() and any("latest wins" in n for n in pop_all.notes)


def test_task_map_uses_the_named_trace_task(store):
    root, quality = store
    pop = population_from_runs(_runs(root), traces="mini", task_map={"arc_easy": "gsm8k"})
    assert pop.task_map["arc_easy"] == "gsm8k" and pop.task_map["piqa"] == OVERALL
    rank = pop.proxies[(pop.proxies["proxy"] == "rank/uniform") & (pop.proxies["task"] == "arc_easy")]
    assert dict(zip(rank["model"], rank["value"])) == {f"m{m}": -quality[m] for m in range(N_MODELS)}
    with pytest.raises(ValueError, match="trace task.*'humaneval'.*were not scored"):
        resolve_task_map(DOWN_TASKS, TRACE_TASKS, {"arc_easy": "humaneval"})
    with pytest.raises(ValueError, match="'winogrande'.*no downstream score"):
        resolve_task_map(DOWN_TASKS, TRACE_TASKS, {"winogrande": "gsm8k"})


def test_report_finds_the_planted_proxy_and_ce_does_not(store):
    root, _ = store
    pop = population_from_runs(_runs(root), traces="mini")
    table, splits = model_selection_report(pop.proxies, pop.truth, n_boot=200)
    by = table.set_index("method")
    assert list(by.index) == ["ce baseline", "single best", "3-sparse", "RankSVM linear", "RankSVM rbf"]
    assert by.loc["single best", "spearman_mean"] > 0.9
    assert by.loc["single best", "chosen"].startswith("top1/uniform x6")  # C(4, 2) splits, all pick it
    assert by.loc["ce baseline", "spearman_mean"] < 0.6
    assert by.loc["single best", "ci_lo"] <= by.loc["single best", "spearman_mean"] <= by.loc["single best", "ci_hi"]
    assert np.isfinite(table[["ci_lo", "ci_hi"]].to_numpy()).all() and (table["ci_lo"] <= table["ci_hi"]).all()
    assert by.loc["RankSVM linear", "spearman_mean"] > 0.8  # the planted proxy dominates a linear ranker too
    assert len(splits) == 5 * 6 and set(splits["held_out"]).issuperset({"arc_easy+hellaswag"})


def test_truth_from_csv_and_its_errors(store, tmp_path):
    root, quality = store
    csv = tmp_path / "truth.csv"
    # models named by reference (or by label): the CSV's scores replace the evaluate runs'
    pd.DataFrame([{"model": f"/models/m{m}/model" if m % 2 else f"m{m}", "task": t, "score": 100 + quality[m]}
                  for m in range(N_MODELS) for t in ("winogrande", "csqa", "boolq")]).to_csv(csv, index=False)
    pop = population_from_runs(_runs(root), traces="mini", truth_csv=str(csv))
    assert sorted(pop.truth["task"].unique()) == ["boolq", "csqa", "winogrande"] and pop.truth["score"].min() >= 100
    assert sorted(pop.truth["model"].unique()) == [f"m{m}" for m in range(N_MODELS)]
    table, _ = model_selection_report(pop.proxies, pop.truth, n_boot=50)
    assert table.set_index("method").loc["single best", "spearman_mean"] > 0.9
    bad = tmp_path / "bad.csv"
    pd.DataFrame({"model": ["m0"], "task": ["piqa"], "value": [1.0]}).to_csv(bad, index=False)
    with pytest.raises(ValueError, match=r"bad.csv.*missing columns \['score'\]"):
        population_from_runs(_runs(root), traces="mini", truth_csv=str(bad))
    with pytest.raises(FileNotFoundError, match="analysis.truth_csv"):
        population_from_runs(_runs(root), traces="mini", truth_csv=str(tmp_path / "nope.csv"))
    with pytest.raises(ValueError, match="eval/<task>/bpb"):
        population_from_runs(_runs(root), traces="mini", truth_metric="bpb")


def test_generative_truth_metric(store):
    """Truth from a generative metric (exact match with a regex filter), and from a lower-is-better one, which the
    runs' logged direction turns so that higher = better; an unknown metric lists the logged ones."""
    root, quality = store
    runs = _runs(root)
    pop = population_from_runs(runs, truth_metric="exact_match_strict-match", traces="mini")
    assert sorted(pop.truth["task"].unique()) == sorted(GEN_TASKS)  # the multiple-choice tasks do not report it
    assert pop.task_map == {"drop": OVERALL, "gsm8k": "gsm8k", "minerva_math": OVERALL}  # gsm8k is a trace task too
    ev = runs[runs["tags.proxy_exp.kind"] == "evaluate"].set_index("params.model.ref")
    truth = pop.truth.set_index(["model", "task"])["score"]
    for m in range(N_MODELS):
        assert truth[(f"m{m}", "drop")] == ev.loc[f"/models/m{m}/model", "metrics.eval/drop/exact_match_strict-match"]
    pop = population_from_runs(runs, truth_metric="exact_match_strict-match", traces="mini",
                               task_map={"gsm8k": OVERALL})  # the overall proxies, where top1/uniform is planted
    table, _ = model_selection_report(pop.proxies, pop.truth, n_boot=50)
    assert table.set_index("method").loc["single best", "spearman_mean"] > 0.9

    bpb = population_from_runs(runs, truth_metric="bits_per_byte", traces="mini", task_map={"gsm8k": OVERALL})
    flipped = bpb.truth.set_index(["model", "task"])["score"]
    assert flipped[("m3", "drop")] == -ev.loc["/models/m3/model", "metrics.eval/drop/bits_per_byte"]
    assert any("lower-is-better" in n and "negated" in n for n in bpb.notes)
    table, _ = model_selection_report(bpb.proxies, bpb.truth, n_boot=50)
    assert table.set_index("method").loc["single best", "spearman_mean"] > 0.9  # not -0.9: the direction was used

    with pytest.raises(ValueError, match=r"eval/<task>/exact_match;.*log acc, bits_per_byte, exact_match_flexible-"
                                         r"extract, exact_match_strict-match, logprob_per_char: set "
                                         r"analysis.truth_metric"):
        population_from_runs(runs, truth_metric="exact_match", traces="mini")


def test_truth_direction_and_evaluate_settings(store, tmp_path):
    """Runs logged before eval.higher_is_better: lm-eval's registry gives the direction (noted); runs of a model
    evaluated differently (another num_fewshot) are refused."""
    from analysis.population import truth_direction

    root, _ = store
    runs = _runs(root)
    old = runs.drop(columns=["params." + HIGHER_IS_BETTER_PARAM])
    higher, note = truth_direction(old, "bits_per_byte")
    assert higher is False and "lm-eval's metric registry" in note and "negated" in note
    assert truth_direction(old, "exact_match_strict-match")[0] is True
    with pytest.raises(ValueError, match="whether a higher my_score is better is unknown"):
        truth_direction(old, "my_score")
    mixed = runs.copy()
    mixed["params.evaluate.num_fewshot"] = None
    first = mixed.index[mixed["tags.proxy_exp.kind"] == "evaluate"][0]
    mixed.loc[first, "params.evaluate.num_fewshot"] = "5"
    with pytest.raises(ValueError, match=r"differ in evaluate.num_fewshot.*analysis.filter"):
        population_from_runs(mixed, truth_metric="exact_match_strict-match", traces="mini")


def _analyze(root, out, *extra, ok=True):
    return run_cli("proxy-analyze", f"paths.root={root}", f"tracking.experiment={EXP}", f"output_dir={out}", *extra,
                   ok=ok)


def test_proxy_analyze_model_selection_cli(store, tmp_path):
    root, _ = store
    out = tmp_path / "ms"
    r = _analyze(root, out, "analysis=model_selection", "analysis.traces=mini", "analysis.n_boot=100")
    for f in ("model_selection.csv", "cv_splits.csv", "population.csv", "summary.txt", "model_selection.png"):
        assert (out / f).is_file(), f
    table = pd.read_csv(out / "model_selection.csv")
    assert len(table) == 5 and table.set_index("method").loc["single best", "spearman_mean"] > 0.9
    assert "leave-2-tasks-out" in r.stdout and "single best" in r.stdout
    # a downstream task mapped to a trace task the population has no proxies of: the analysis refuses it
    bad = _analyze(root, tmp_path / "bad", "analysis=model_selection", "++analysis.task_map={piqa: humaneval}", ok=False)
    assert bad.returncode == 2 and "humaneval" in bad.stderr and "Traceback" not in bad.stderr, bad.stderr
    assert "task_map" in bad.stderr
    typo = _analyze(root, tmp_path / "bad", "analysis=model_selection", "analysis.task_map={piqa: humaneval}", ok=False)
    assert typo.returncode == 2 and "++analysis.task_map=" in typo.stderr  # the one line says how a dict takes keys
    assert not (tmp_path / "bad" / "model_selection.csv").exists()


def test_proxy_analyze_forecast_cli_on_logged_history(tmp_path):
    """An emergent run logged step by step: the proxy forecast beats compute-only, and ce (which here carries
    the same signal) is reported beside it."""
    steps = np.unique(np.geomspace(10, 18 * 400, 40).round()).astype(int)
    rng = np.random.default_rng(0)
    proxy = power_law(steps.astype(float), 0.6, 1.5, 0.4)
    ce = 2.0 + 10.0 * steps.astype(float) ** -0.4
    acc = sigmoid(proxy, 0.25, 0.9, 12.0, 0.45) + rng.normal(0, 0.003, steps.size)
    hist = {int(s): {"proxy/top5/freq": float(p), "proxy/ce/uniform": float(c), "eval/mean/acc": float(a)}
            for s, p, c, a in zip(steps, proxy, ce, acc)}
    run_id = _log(tmp_path, "train", tracking.unit_tags("train", "t0", ""), {"pretrain.warmup_frac": 0.01}, {}, hist)
    out = tmp_path / "fc"
    r = _analyze(tmp_path, out, "analysis=forecast", "analysis.fit_fraction=0.0556")
    table = pd.read_csv(out / "forecast.csv").set_index("method")
    assert run_id in r.stdout and (out / "forecast.png").is_file()
    proxy_rmse = table.loc["two-step from top5/freq", "rmse"]
    assert proxy_rmse < 0.03 and table.loc["compute-only", "rmse"] > 2 * proxy_rmse
    assert (table["rmse_stderr"] > 0).all() and (table["rmse_stderr"] < table["rmse"]).all()
    # the warm-up (1% of 7,200 steps = 72) ends before the fit window (steps <= 400): said in the summary
    assert "learning-rate warm-up: 72 steps" in r.stdout and "past it" in r.stdout
    assert table["n_fit"].min() >= 4 and (table["n_held_out"] > 0).all()
    missing = _analyze(tmp_path, tmp_path / "fc2", "analysis=forecast", "analysis.accuracy_metric=eval/mean/nope",
                       ok=False)
    assert missing.returncode != 0 and "eval/mean/nope" in missing.stderr and "Traceback" not in missing.stderr


def test_evaluate_runs_over_other_items_are_not_mixed_in(tmp_path):
    """A newer evaluate run of one model over other items (another limit, one task) and a score run over another
    trace set: the analysis refuses to mix limits unless told which, and ignores trace tasks other runs have."""
    quality = _build_store(tmp_path)
    ref = "/models/m0/model"
    _log(tmp_path, "evaluate m0 sciq", tracking.unit_tags("evaluate", "e0b", ""),
         {"model.path": ref, "model.ref": ref, "evaluate.limit": 500}, {"eval/sciq/logprob_per_char": 1.0})
    # scored over other traces under the same set name (traces.tasks overridden, traces.name left as it was)
    _log(tmp_path, "score m1 sciq", tracking.unit_tags("score", "s1b", ""),
         {"model.path": "/models/m1/model", "model.ref": "/models/m1/model", "traces.name": "mini",
          "traces.tasks": "['sciq']"}, {"proxy_task/sciq/ce/uniform": 1.0})
    with pytest.raises(ValueError, match=r"different trace sets.*tasks=\['sciq'\].*analysis.trace_tasks"):
        population_from_runs(_runs(tmp_path), traces="mini", evaluate_limit=100)
    with pytest.raises(ValueError, match=r"different evaluate.limit values.*analysis.evaluate_limit"):
        population_from_runs(_runs(tmp_path), traces="mini", trace_tasks=TRACE_TASKS)
    pop = population_from_runs(_runs(tmp_path), traces="mini", evaluate_limit=100, trace_tasks=TRACE_TASKS)
    assert pop.task_map == {t: OVERALL for t in DOWN_TASKS}  # the sciq trace task is not among these score runs
    truth = pop.truth[(pop.truth["model"] == "m0") & (pop.truth["task"] == "piqa")]["score"]
    assert len(truth) == 1 and abs(float(truth.iloc[0]) - quality[0]) < 0.5
