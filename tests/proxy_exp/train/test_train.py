"""The DeepSpeed train loop (world size 1): loss goes down; stop + resume equals an uninterrupted run."""
import json
import os

import pytest

from proxy_exp import units
from tests.helpers import loss_history, mlflow_client, tiny_train_cfg
from proxy_exp.train.job import train
from proxy_exp.train.plan import lr_lambda, plan_training


def _cfg(root, **pretrain):
    return tiny_train_cfg(root, **pretrain)


def _loss_history(root, run_id):
    return loss_history(root, run_id)


def test_lr_schedule_warmup_then_cosine():
    vals = [lr_lambda(s, 100, 0.1, 0.1) for s in range(100)]
    assert vals[0] == pytest.approx(0.1) and vals[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(vals[10:], vals[11:]))
    assert vals[-1] == pytest.approx(0.1, abs=1e-3)


def test_exact_token_budget_and_flops():
    cfg = _cfg("/tmp/x", max_tokens=0)
    cfg.pretrain.tokens_per_param = 10
    plan = plan_training(cfg, 512)
    assert plan.budget_tokens == round(10 * plan.n_params_non_embedding)
    assert plan.steps * plan.tokens_per_step == plan.tokens and 0 <= plan.tokens - plan.budget_tokens < plan.tokens_per_step
    assert plan.flops == pytest.approx((6 * plan.n_params_non_embedding + 12 * 2 * 32 * 64) * plan.tokens)
    assert plan.gradient_accumulation == 2


def test_train_lowers_loss_and_logs(tmp_path):
    r = train(_cfg(tmp_path), progress=False)
    hist = _loss_history(tmp_path, r.run_id)
    assert [s for s, _ in hist] == list(range(1, 41))  # every step once
    assert hist[-1][1] < hist[0][1] - 1.0, hist  # the loss really goes down
    assert os.path.exists(os.path.join(r.model_dir, "model.safetensors"))
    meta = json.load(open(os.path.join(r.model_dir, "proxy_exp.json")))
    assert meta["train_flops"] == pytest.approx(r.flops)
    assert units.read_done(str(tmp_path), r.unit_id)["final_loss"] == pytest.approx(r.final_loss)
    # the saved model loads like any HF model, with its tokenizer
    from transformers import AutoModelForCausalLM, AutoTokenizer
    AutoModelForCausalLM.from_pretrained(r.model_dir)
    assert AutoTokenizer.from_pretrained(r.model_dir).decode(
        AutoTokenizer.from_pretrained(r.model_dir)("To be, or not")["input_ids"]) == "To be, or not"
    # a second call finds the completion marker and does not train again
    again = train(_cfg(tmp_path), progress=False)
    assert again.run_id == r.run_id and again.final_loss == r.final_loss


def test_stop_and_resume_matches_uninterrupted(tmp_path):
    full = train(_cfg(tmp_path / "a"), progress=False)
    part = train(_cfg(tmp_path / "b", stop_after_steps=15), progress=False)
    assert part.stopped and part.steps == 15
    ckpts = sorted(os.listdir(os.path.join(str(tmp_path / "b"), "units", part.unit_id, "checkpoints")))
    assert "step-10" in ckpts and "step-15" in ckpts
    resumed = train(_cfg(tmp_path / "b"), progress=False)
    assert not resumed.stopped and resumed.steps == 40
    assert resumed.final_loss == pytest.approx(full.final_loss, abs=1e-5)
    assert resumed.run_id == part.run_id  # the resumed unit continues its own MLflow run
    a, b = _loss_history(tmp_path / "a", full.run_id), _loss_history(tmp_path / "b", resumed.run_id)
    assert [s for s, _ in b] == list(range(1, 41))  # no lost and no duplicated steps
    assert [v for _, v in a] == pytest.approx([v for _, v in b], abs=1e-5)


def test_bf16_training_checkpoints_and_resumes_exactly(tmp_path):
    """pretrain.precision=bf16 (what a GPU job trains in): DeepSpeed's bf16 optimizer, its fp32 master weights and
    optimizer state go through a checkpoint and resume exactly as in fp32; the GPU check runs the same on NCCL."""
    bf16 = dict(steps=20, precision="bf16")
    full = train(_cfg(tmp_path / "a", **bf16), progress=False)
    part = train(_cfg(tmp_path / "b", stop_after_steps=10, **bf16), progress=False)
    assert part.stopped and part.steps == 10
    resumed = train(_cfg(tmp_path / "b", **bf16), progress=False)
    assert resumed.steps == 20 and resumed.final_loss == pytest.approx(full.final_loss, abs=1e-6)
    params = mlflow_client(tmp_path / "a").get_run(full.run_id).data.params
    assert (params["bf16"], params["device"]) == ("True", "cpu")
    fp32 = train(_cfg(tmp_path / "c", steps=20), progress=False)
    assert fp32.final_loss != pytest.approx(full.final_loss, abs=1e-6)  # bf16 really changed the arithmetic


def test_interrupted_between_metrics_and_marker_logs_each_step_once(tmp_path):
    """A kill after a checkpoint's metrics reached MLflow but before its COMPLETE marker: the resumed run
    restarts from the previous checkpoint, re-computes those steps and must not send them a second time."""
    part = train(_cfg(tmp_path, stop_after_steps=20), progress=False)
    ckpt = os.path.join(str(tmp_path), "units", part.unit_id, "checkpoints")
    assert [s for s, _ in _loss_history(tmp_path, part.run_id)] == list(range(1, 21))
    os.remove(os.path.join(ckpt, "step-20", "COMPLETE"))  # as if killed just before the marker
    resumed = train(_cfg(tmp_path), progress=False)
    assert resumed.steps == 40 and resumed.run_id == part.run_id
    assert [s for s, _ in _loss_history(tmp_path, resumed.run_id)] == list(range(1, 41))


def test_preemption_signal_saves_at_step_boundary_and_resumes(tmp_path):
    """USR2 mid-run (not under Slurm): the loop finishes its step, checkpoints, stops; a rerun resumes exactly."""
    import signal
    import threading
    import time

    steps = 200
    full = train(_cfg(tmp_path / "a", max_tokens=64 * 16 * steps), progress=False)
    cfg = _cfg(tmp_path / "b", max_tokens=64 * 16 * steps)
    ckpt = os.path.join(str(tmp_path / "b"), "units", full.unit_id, "checkpoints", "step-10", "COMPLETE")

    def send_when_training():
        deadline = time.time() + 120
        while not os.path.exists(ckpt) and time.time() < deadline:
            time.sleep(0.02)
        os.kill(os.getpid(), signal.SIGUSR2)

    threading.Thread(target=send_when_training, daemon=True).start()
    part = train(cfg, progress=False)
    assert part.stopped and 10 <= part.steps < steps
    latest = os.path.join(str(tmp_path / "b"), "units", full.unit_id, "checkpoints", f"step-{part.steps}", "COMPLETE")
    assert os.path.exists(latest)  # saved at the step boundary where it stopped
    resumed = train(_cfg(tmp_path / "b", max_tokens=64 * 16 * steps), progress=False)
    assert resumed.steps == steps and resumed.final_loss == pytest.approx(full.final_loss, abs=1e-5)
    assert [s for s, _ in _loss_history(tmp_path / "b", resumed.run_id)] == list(range(1, steps + 1))


def test_in_loop_scoring_logs_proxies_as_step_metrics(tmp_path):
    from proxy_exp.config import EvaluateConfig, InLoopConfig, TracesConfig
    from tests.helpers import FIXTURES

    cfg = _cfg(tmp_path, max_tokens=64 * 16 * 20)
    cfg.in_loop = InLoopConfig(score_every=10, eval_every=20,
                               traces=TracesConfig(source="jsonl", tasks=[], per_task=0,
                                                   paths=[os.path.join(FIXTURES, "traces.jsonl")]),
                               evaluate=EvaluateConfig(tasks=["arc_easy"], limit=4))  # short answers: 64-token model
    r = train(cfg, progress=False)
    client = mlflow_client(tmp_path)
    ce = sorted(client.get_metric_history(r.run_id, "proxy/ce/uniform"), key=lambda m: m.step)
    assert [m.step for m in ce] == [10, 20]
    assert ce[1].value < ce[0].value  # the model learns, and the in-loop proxy sees it
    assert len([k for k in client.get_run(r.run_id).data.metrics if k.startswith("proxy/")]) == 80
    assert [m.step for m in client.get_metric_history(r.run_id, "eval/mean/acc")] == [20]


def test_in_loop_log_spaced_checkpoints(tmp_path):
    from proxy_exp.config import EvaluateConfig, InLoopConfig, TracesConfig
    from proxy_exp.train.in_loop import log_spaced_steps
    from tests.helpers import FIXTURES

    assert log_spaced_steps(4, 20) == {1, 3, 7, 20} and log_spaced_steps(0, 20) == set()
    assert log_spaced_steps(50, 10) == set(range(1, 11))  # more points than steps: every step once
    cfg = _cfg(tmp_path, max_tokens=64 * 16 * 20)
    cfg.in_loop = InLoopConfig(log_points=4, traces=TracesConfig(source="jsonl", tasks=[], per_task=0,
                                                                 paths=[os.path.join(FIXTURES, "traces.jsonl")]),
                               evaluate=EvaluateConfig(tasks=["arc_easy"], limit=4))
    r = train(cfg, progress=False)
    client = mlflow_client(tmp_path)
    for key in ("proxy/top5/freq", "eval/mean/acc"):
        assert sorted(m.step for m in client.get_metric_history(r.run_id, key)) == [1, 3, 7, 20]


def test_compiled_training_matches_eager_and_saves_plain_weights(tmp_path):
    """pretrain.compile=true (DeepSpeed's engine.compile, inductor on CPU here): the same losses as eager within
    float tolerance, and the saved model loads as a plain HF model (no _orig_mod. prefixes)."""
    from transformers import AutoModelForCausalLM

    eager = train(_cfg(tmp_path / "eager", max_tokens=64 * 16 * 6, checkpoint_every=0), progress=False)
    compiled = train(_cfg(tmp_path / "compiled", max_tokens=64 * 16 * 6, checkpoint_every=0, compile=True),
                     progress=False)
    a = _loss_history(tmp_path / "eager", eager.run_id)
    b = _loss_history(tmp_path / "compiled", compiled.run_id)
    assert [s for s, _ in a] == [s for s, _ in b] and len(a) >= 1
    for (_, x), (_, y) in zip(a, b):
        assert y == pytest.approx(x, rel=1e-4, abs=1e-4)
    model = AutoModelForCausalLM.from_pretrained(compiled.model_dir)
    assert not any("_orig_mod" in k for k in model.state_dict())
