"""The console scripts as a user runs them: train -> score -> evaluate, a multirun sweep, bad input."""
import glob
import os

import pytest
from mlflow.tracking import MlflowClient

from tests.helpers import FIXTURES, run_cli as _cli

TRACES = ["traces=jsonl", f"traces.paths=[{os.path.join(FIXTURES, 'traces.jsonl')}]", "traces.tasks=[]"]


def _runs(root, kind):
    c = MlflowClient(f"sqlite:///{root}/mlflow.db")
    exp = c.get_experiment_by_name("cli")
    return c.search_runs([exp.experiment_id], filter_string=f"tags.`proxy_exp.kind` = '{kind}'")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    r = _cli("proxy-train", f"paths.root={root}", "tracking.experiment=cli", "tokenizer.vocab_size=512",
             "tokenizer.sample_bytes_per_corpus=100000", "corpus.max_bytes=200000", "pretrain.max_tokens=10240")
    assert "final loss" in r.stdout
    (model_dir,) = glob.glob(f"{root}/units/train-*/model")
    return root, model_dir


def test_score_and_eval_cli_on_trained_model(trained):
    root, model_dir = trained
    r = _cli("proxy-score", f"model.path={model_dir}", f"paths.root={root}", "tracking.experiment=cli", *TRACES)
    (run,) = _runs(root, "score")
    assert len([k for k in run.data.metrics if k.startswith("proxy/")]) == 80
    printed = {line.split()[0]: float(line.split()[1]) for line in r.stdout.splitlines() if line.startswith("  proxy/")}
    assert set(printed) == {"proxy/ce/uniform", "proxy/top1/uniform", "proxy/top5/freq", "proxy/rank/uniform"}
    for key, value in printed.items():  # the summary shows what MLflow holds
        assert value == pytest.approx(run.data.metrics[key], abs=5e-5), key
    assert run.data.metrics["flops/train"] > 0  # read from the record proxy-train left beside the model
    # where and how it ran, as resolved on this machine (CPU: fp32, the torch path, one trace a batch)
    assert {k: run.data.params[k] for k in ("model.device_resolved", "model.dtype_resolved", "score.kernel_resolved",
                                            "score.batch_size_resolved")} == {
        "model.device_resolved": "cpu", "model.dtype_resolved": "float32", "score.kernel_resolved": "torch",
        "score.batch_size_resolved": "1"}  # score.batch_size=0 (auto): 1 on CPU
    r = _cli("proxy-eval", f"model.path={model_dir}", f"paths.root={root}", "tracking.experiment=cli",
             "evaluate.tasks=[piqa]", "evaluate.limit=4")
    (run,) = _runs(root, "evaluate")
    assert run.data.metrics["eval/piqa/n"] == 4
    assert (run.data.params["model.device_resolved"], run.data.params["model.dtype_resolved"]) == ("cpu", "float32")


def test_multirun_sweep_through_submitit_local(trained):
    root, model_dir = trained
    _cli("proxy-score", "-m", "hydra/launcher=submitit_local", f"model.path={model_dir}", f"paths.root={root}",
         "tracking.experiment=cli", "score.window=8,16", *TRACES)
    windows = sorted(r.data.params["score.window"] for r in _runs(root, "score"))
    assert "8" in windows and "16" in windows


def test_bad_model_path_is_one_clear_error(tmp_path):
    r = _cli("proxy-score", "model.path=/no/such/model", f"paths.root={tmp_path}", *TRACES, ok=False)
    assert r.returncode == 2
    assert "model.path" in r.stderr and "/no/such/model" in r.stderr and "Traceback" not in r.stderr
    assert not glob.glob(f"{tmp_path}/units/*/DONE.json")  # nothing that looks complete


def test_bad_traces_file_names_file_and_field(tmp_path, trained):
    _, model_dir = trained
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "a", "task": "t", "prompt": "p", "answer": "1"}\n')
    r = _cli("proxy-score", f"model.path={model_dir}", f"paths.root={tmp_path}", "traces=jsonl",
             f"traces.paths=[{bad}]", "traces.tasks=[]", ok=False)
    assert r.returncode == 2 and str(bad) in r.stderr and "solution" in r.stderr and "Traceback" not in r.stderr


def test_analyze_datadecide_writes_table_into_run_dir(tmp_path):
    """proxy-analyze analysis=datadecide: decision_accuracy.csv in the run's (Hydra) output directory."""
    import pandas as pd

    r = _cli("proxy-analyze", "analysis=datadecide", f"hydra.run.dir={tmp_path}/run")
    table = pd.read_csv(tmp_path / "run" / "decision_accuracy.csv")
    assert {"size", "compute", "decision_accuracy"} <= set(table.columns) and len(table) == 13
    assert (tmp_path / "run" / "frontier.png").exists() and "150M" in r.stdout


def test_analyze_datadecide_under_datadecides_tie_rule(tmp_path):
    """analysis.ties=datadecide: DataDecide's own rule (the same 150M figure: its table has no ties); asked of a
    campaign's analysis, one line before any work."""
    import pandas as pd

    _cli("proxy-analyze", "analysis=datadecide", "analysis.ties=datadecide", f"hydra.run.dir={tmp_path}/dd",
         "analysis.plots=false")
    _cli("proxy-analyze", "analysis=datadecide", f"hydra.run.dir={tmp_path}/half", "analysis.plots=false")
    dd, half = (pd.read_csv(tmp_path / d / "decision_accuracy.csv").set_index("size") for d in ("dd", "half"))
    assert dd.loc["150M", "decision_accuracy"] == half.loc["150M", "decision_accuracy"]
    for cli in ("proxy-analyze", "proxy-campaign"):
        r = _cli(cli, "analysis.ties=datadecide", f"paths.root={tmp_path}", ok=False)
        assert r.returncode == 2 and "analysis.ties" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "mlflow.db").exists()  # refused before any work
