"""Checkpoints of a run that is not proxy-exp's: proxy-score logs into that run at the checkpoint's step (or into
child runs tagged with it), a checkpoint rewritten in place is scored again (its identity is part of the unit id),
and the forecast analysis reads such a run."""
import os
import shutil

import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient

from proxy_exp.config import (AnalysisConfig, ModelConfig, PathsConfig, ScoreConfig, ScoreJobConfig, TracesConfig,
                              TrackingConfig)
from proxy_exp.score.job import score
from tests.helpers import FIXTURE_TRACE_OVERRIDES, FIXTURE_TRACES, read_jsonl, run_cli

STEPS = [1, 2, 3, 4, 6, 8, 11, 16, 23, 32, 45, 64]
TRACES = TracesConfig(name="fixture", source="jsonl", tasks=[], per_task=2, paths=[FIXTURE_TRACES])


@pytest.fixture(scope="module")
def team_run(tmp_path_factory):
    """A team's own loop: a tiny Llama trained 64 steps on the fixture text, an HF checkpoint saved at log-spaced
    steps, and its own held-out accuracy (next-token top-1) logged into its own MLflow run at those steps."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from proxy_exp.data.tokenizer import train_bpe

    root = tmp_path_factory.mktemp("team")
    rows = read_jsonl(FIXTURE_TRACES)
    tok = train_bpe([r["prompt"] + r["solution"] for r in rows], 400)
    ids = torch.tensor(tok("\n".join(r["prompt"] + r["solution"] for r in rows), add_special_tokens=False)["input_ids"])
    train_ids, held = ids[: int(0.8 * len(ids))], ids[int(0.8 * len(ids)):]
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=256,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    client = MlflowClient(f"sqlite:///{root}/mlflow.db")
    run_id = client.create_run(client.create_experiment("team")).info.run_id
    g = torch.Generator().manual_seed(0)
    for step in range(1, STEPS[-1] + 1):
        starts = torch.randint(0, len(train_ids) - 65, (8,), generator=g)
        batch = torch.stack([train_ids[s:s + 64] for s in starts])
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        if step in STEPS:
            with torch.no_grad():
                x = held[: 4 * 64].reshape(4, 64)
                acc = (model(input_ids=x).logits[:, :-1].argmax(-1) == x[:, 1:]).float().mean().item()
            client.log_metric(run_id, "team/acc", acc, step=step)
            model.save_pretrained(root / "ckpt" / f"step-{step}")
            tok.save_pretrained(root / "ckpt" / f"step-{step}")
    return root, run_id


def _score(root, path, **kw):
    return score(ScoreJobConfig(model=ModelConfig(arch="pretrained", path=str(path)), traces=TRACES,
                                score=ScoreConfig(), paths=PathsConfig(root=str(root)),
                                tracking=TrackingConfig(experiment="team", run_id=kw.pop("run_id", "")), **kw),
                 progress=False)


def test_a_checkpoint_rewritten_in_place_is_scored_again(team_run, tmp_path):
    root, _ = team_run
    latest = tmp_path / "latest"
    shutil.copytree(root / "ckpt" / "step-1", latest)
    first = _score(tmp_path, latest)
    assert _score(tmp_path, latest).unit_id == first.unit_id  # unchanged: the finished unit is reused
    shutil.rmtree(latest)
    shutil.copytree(root / "ckpt" / "step-64", latest)  # the trainer overwrites latest/
    again = _score(tmp_path, latest)
    assert again.unit_id != first.unit_id
    assert again.proxies["proxy/ce/uniform"] < first.proxies["proxy/ce/uniform"] - 0.5  # the trained weights


def test_proxy_score_logs_into_the_teams_run_and_the_forecast_reads_it(team_run, tmp_path):
    from analysis.reports import analyze_forecast

    root, run_id = team_run
    for step in STEPS:
        r = _score(root, root / "ckpt" / f"step-{step}", run_id=run_id, step=step, tokens_seen=step * 8 * 64)
        assert r.run_id == run_id
    client = MlflowClient(f"sqlite:///{root}/mlflow.db")
    ce = sorted((m.step, m.value) for m in client.get_metric_history(run_id, "proxy/ce/uniform"))
    assert [s for s, _ in ce] == STEPS and ce[-1][1] < ce[0][1]
    assert client.get_run(run_id).info.status == "RUNNING"  # the team's run is theirs to end
    acfg = AnalysisConfig(kind="forecast", train_run_id=run_id, accuracy_metric="team/acc", fit_fraction=0.3,
                          horizon_multiple=4.0, plots=False)
    analyze_forecast(TrackingConfig(experiment="team"), str(root), str(tmp_path / "fc"), acfg)
    import pandas as pd

    table = pd.read_csv(tmp_path / "fc" / "forecast.csv")
    hist = pd.read_csv(tmp_path / "fc" / "history.csv")
    assert list(hist["step"]) == STEPS and list(hist.columns[:4]) == ["step", "top5/freq", "ce/uniform", "accuracy"]
    assert table["method"].tolist()[:2] == ["two-step from top5/freq", "two-step from ce/uniform (loss)"]
    assert np.isfinite(table["rmse"]).any()


def test_forecast_from_a_parent_whose_children_are_checkpoints(team_run, tmp_path):
    from analysis.reports import analyze_forecast

    root, _ = team_run
    client = MlflowClient(f"sqlite:///{root}/mlflow.db")
    exp = client.get_experiment_by_name("team").experiment_id
    parent = client.create_run(exp, run_name="my-1b-run").info.run_id
    team = {m.step: m.value for m in client.get_metric_history(team_run[1], "team/acc")}
    for step in STEPS:
        _score(root, root / "ckpt" / f"step-{step}", parent_run_id=parent, step=step)
        child = client.create_run(exp, tags={"mlflow.parentRunId": parent, "proxy_exp.step": str(step)})
        client.log_metric(child.info.run_id, "team/acc", team[step])  # the team's own evaluation of that checkpoint
        client.set_terminated(child.info.run_id)  # FINISHED, as `with mlflow.start_run(nested=True):` leaves it
    steps = sorted(int(r.data.tags["proxy_exp.step"]) for r in client.search_runs(
        [exp], f"tags.`proxy_exp.kind` = 'score' and tags.`mlflow.parentRunId` = '{parent}'"))
    assert steps == STEPS
    acfg = AnalysisConfig(kind="forecast", train_run_id=parent, accuracy_metric="team/acc", fit_fraction=0.3,
                          horizon_multiple=4.0, plots=False)
    analyze_forecast(TrackingConfig(experiment="team"), str(root), str(tmp_path / "fc"), acfg)
    import pandas as pd

    hist = pd.read_csv(tmp_path / "fc" / "history.csv")
    assert list(hist["step"]) == STEPS and list(hist["accuracy"]) == [team[s] for s in STEPS]
    assert os.path.isfile(tmp_path / "fc" / "forecast.csv")


def test_a_checkpoint_re_scored_at_the_same_step_reads_as_its_newest_finished_child(team_run, tmp_path):
    """latest/ scored as step 5, then overwritten by the trainer and scored again as step 5 under the same parent:
    the forecast's history holds the second scoring's proxies; a newer child that failed or is still running (its
    metrics partial) is not read."""
    from analysis.history import train_history

    root, _ = team_run
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    exp = client.create_experiment("team")
    parent = client.create_run(exp, run_name="my-1b-run").info.run_id
    latest = tmp_path / "latest"
    shutil.copytree(root / "ckpt" / "step-1", latest)
    old = _score(tmp_path, latest, parent_run_id=parent, step=5)
    shutil.rmtree(latest)
    shutil.copytree(root / "ckpt" / "step-64", latest)  # the trainer overwrites latest/ and it is scored again
    new = _score(tmp_path, latest, parent_run_id=parent, step=5)
    _score(tmp_path, root / "ckpt" / "step-8", parent_run_id=parent, step=8)
    ce = "proxy/ce/uniform"
    assert new.proxies[ce] < old.proxies[ce] - 0.5
    for status, value in (("FAILED", 99.0), ("KILLED", 98.0), ("RUNNING", 97.0)):  # newer still, not FINISHED
        child = client.create_run(exp, tags={"mlflow.parentRunId": parent, "proxy_exp.step": "5"}).info.run_id
        client.log_metric(child, ce, value)
        if status != "RUNNING":
            client.set_terminated(child, status)
    hist = train_history(f"sqlite:///{tmp_path}/mlflow.db", parent, {"ce": ce})
    assert list(hist["step"]) == [5, 8]
    assert hist["ce"].iloc[0] == pytest.approx(new.proxies[ce])  # not the older scoring's, nor 97-99


def test_proxy_score_and_proxy_eval_cli_log_into_an_existing_run_at_its_step(team_run, tmp_path):
    """The command lines a team runs on a saved checkpoint: proxies (and lm-eval metrics) land in the given run at
    step N; its own params, tags, metrics and status are left as they were."""
    root, _ = team_run
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    exp = client.create_experiment("team")
    run_id = client.create_run(exp, run_name="my-1b-run", tags={"team.owner": "lab"}).info.run_id
    client.log_param(run_id, "lr", "3e-3")
    for step in (8, 16):
        client.log_metric(run_id, "team/acc", step / 100, step=step)
    before = client.get_run(run_id)
    ckpt = root / "ckpt" / "step-16"
    common = [f"model.path={ckpt}", "step=16", f"tracking.run_id={run_id}", f"paths.root={tmp_path}",
              "tracking.experiment=team"]
    run_cli("proxy-score", *common, *FIXTURE_TRACE_OVERRIDES, "traces.per_task=2", timeout=300)
    run_cli("proxy-eval", *common, "evaluate.tasks=[piqa]", "evaluate.limit=4", timeout=300)
    after = client.get_run(run_id)
    assert [(m.step, m.value) for m in client.get_metric_history(run_id, "team/acc")] == [(8, 0.08), (16, 0.16)]
    for key in ("proxy/ce/uniform", "proxy/top5/freq", "eval/piqa/n"):
        assert [m.step for m in client.get_metric_history(run_id, key)] == [16], key
    assert len([k for k in after.data.metrics if k.startswith("proxy/")]) == 80
    assert after.data.metrics["eval/piqa/n"] == 4
    assert after.data.params == before.data.params == {"lr": "3e-3"}
    assert after.data.tags == before.data.tags and after.info.status == "RUNNING"
    assert after.info.run_name == "my-1b-run"
    artifacts = {a.path for a in client.list_artifacts(run_id)}
    assert artifacts == {"scores", "lm_eval"}
    assert {a.path for a in client.list_artifacts(run_id, "scores")} == {"scores/step-16"}
    assert [r.info.run_id for r in client.search_runs([exp])] == [run_id]  # no run of its own


def test_standalone_ids_follow_the_dtype_and_the_parent_run(tmp_path):
    """The same checkpoint scored in bf16 on a GPU and in fp32 on a CPU are two results (model.dtype=auto resolves
    per machine), and so are its proxies logged as a child of another parent run; fp32 keeps the ids CPU runs had."""
    from proxy_exp.units import standalone_extra

    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text("{}")
    base = standalone_extra(str(tmp_path / "m"), "", 8)
    assert standalone_extra(str(tmp_path / "m"), "", 8, dtype="float32") == base
    assert standalone_extra(str(tmp_path / "m"), "", 8, dtype="bfloat16") == {**base, "dtype": "bfloat16"}
    assert standalone_extra(str(tmp_path / "m"), "", 8, parent_run_id="p1")["parent_run_id"] == "p1"
