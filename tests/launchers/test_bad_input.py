"""Bad input through the console scripts (issue 14): one `error:` line naming the key or file, what is wrong and the
fix, exit 2, no traceback (unless PROXY_EXP_TRACEBACK=1), and nothing that looks complete; a bug keeps its traceback."""
import glob
import json
import os
import subprocess
import sys

import pytest

from tests.helpers import REPO, run_cli


def _one_error(r, root, *names: str) -> str:
    """The single `error:` line of a run that failed on user input; asserts the rest of the contract."""
    assert r.returncode == 2, r.stdout[-2000:] + r.stderr[-2000:]
    errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].strip() != "error:", r.stderr[-2000:]
    for name in names:
        assert name in errors[0], (name, errors[0])
    assert "Traceback" not in r.stderr
    assert not glob.glob(f"{root}/units/*/DONE.json")
    return errors[0]


# ------------------------------------------------------------------------- compose time: group option, key, enum
def test_unknown_config_group_option(tmp_path):
    r = run_cli("proxy-train", f"paths.root={tmp_path}", "corpus=nosuchcorpus", "dry_run=true", ok=False)
    line = _one_error(r, tmp_path, "corpus=nosuchcorpus", "'corpus'", "shakespeare", "wikipedia")
    assert "choose one of" in line


def test_unknown_model_option_of_score(tmp_path):
    r = run_cli("proxy-score", f"paths.root={tmp_path}", "model=nosuch", ok=False)
    _one_error(r, tmp_path, "model=nosuch", "'model'", "smollm2_135m", "choose one of")


def test_unknown_key(tmp_path):
    r = run_cli("proxy-train", f"paths.root={tmp_path}", "pretrain.global_btach=8", "dry_run=true", ok=False)
    _one_error(r, tmp_path, "pretrain.global_btach", "check the spelling", "global_batch")


def test_misspelt_enumerated_value(tmp_path):
    r = run_cli("proxy-score", f"paths.root={tmp_path}", "score.kernel=trition", ok=False)
    _one_error(r, tmp_path, "score.kernel", "trition", "auto, torch, triton")
    assert not os.path.exists(tmp_path / "mlflow.db")  # failed before the store was opened


def test_override_that_does_not_parse(tmp_path):
    r = run_cli("proxy-train", f"paths.root={tmp_path}", "pretrain.seq_len=[", "dry_run=true", ok=False)
    _one_error(r, tmp_path, "pretrain.seq_len=[", "key=value")


def test_value_of_the_wrong_type(tmp_path):
    r = run_cli("proxy-train", f"paths.root={tmp_path}", "pretrain.seq_len=abc", "dry_run=true", ok=False)
    _one_error(r, tmp_path, "pretrain.seq_len", "'abc'", "Integer")


# ------------------------------------------------------------------------------- sizes and the batch split
@pytest.mark.parametrize("override,key", [
    ("model.n_layers=0", "model.n_layers"), ("model.d_model=-64", "model.d_model"),
    ("pretrain.max_tokens=-1", "pretrain.max_tokens"), ("pretrain.global_batch=0", "pretrain.global_batch"),
    ("tokenizer.vocab_size=0", "tokenizer.vocab_size"), ("pretrain.seq_len=0", "pretrain.seq_len"),
])
def test_zero_or_negative_size(tmp_path, override, key):
    r = run_cli("proxy-train", f"paths.root={tmp_path}", override, "dry_run=true", ok=False)
    _one_error(r, tmp_path, f"{key}={override.split('=')[1]}", f"set {key}" if "max_tokens" not in key else "0")


def test_zero_size_fails_before_any_work(tmp_path):
    """Not only the dry run: a real run stops before the tokenizer is built or anything is written."""
    r = run_cli("proxy-train", f"paths.root={tmp_path}", "model.n_layers=0", ok=False)
    _one_error(r, tmp_path, "model.n_layers=0")
    assert not os.path.exists(tmp_path / "cache") and not os.path.exists(tmp_path / "units")


def test_impossible_world_size(tmp_path):
    r = run_cli("proxy-train", f"paths.root={tmp_path}", "pretrain.tasks_per_node=2", "pretrain.global_batch=3",
                "pretrain.micro_batch=1", "dry_run=true", ok=False)
    _one_error(r, tmp_path, "pretrain.global_batch=3", "pretrain.micro_batch=1", "pretrain.tasks_per_node=2",
               "multiple of 2")


def test_global_batch_not_a_multiple_of_micro_batch(tmp_path):
    r = run_cli("proxy-train", f"paths.root={tmp_path}", "pretrain.global_batch=12", "pretrain.micro_batch=8",
                "dry_run=true", ok=False)
    _one_error(r, tmp_path, "pretrain.global_batch=12", "pretrain.micro_batch=8", "multiple of 8")


# ------------------------------------------------------------------------------- data
def test_corpus_smaller_than_one_batch(tmp_path):
    tiny = tmp_path / "tiny.txt"
    tiny.write_text("hello world, a small text. " * 40)
    root = tmp_path / "root"
    r = run_cli("proxy-train", f"paths.root={root}", "corpus.name=tiny", "corpus.source=text_files",
                f"corpus.paths=[{tiny}]", "tokenizer.vocab_size=300", "tokenizer.sample_bytes_per_corpus=10000",
                "pretrain.max_tokens=1024", "pretrain.seq_len=32", ok=False, timeout=300)
    line = _one_error(r, root, "corpus 'tiny'", "fewer than one batch", "pretrain.global_batch=16",
                      "pretrain.seq_len=32", "= 512 tokens", "add data")
    assert " tokens" in line.split("holds ")[1]


# ------------------------------------------------------------------------------- user errors vs bugs
def test_user_error_traceback_on_request(tmp_path):
    r = run_cli("proxy-train", f"paths.root={tmp_path}", "model.n_layers=0", "dry_run=true", ok=False,
                env={"PROXY_EXP_TRACEBACK": "1"})
    assert r.returncode == 2 and "Traceback" in r.stderr
    assert [line for line in r.stderr.splitlines() if line.startswith("error:")] == [
        "error: model.n_layers=0 must be a positive number: set model.n_layers to 1 or more"]


def test_only_proxy_exps_own_value_errors_are_user_errors():
    from launchers.app import raised_in_project, user_error_message
    from proxy_exp.config import TrainJobConfig
    from proxy_exp.train.plan import check_train_config

    job = TrainJobConfig()
    job.pretrain.global_batch = 0
    with pytest.raises(ValueError) as ours:
        check_train_config(job)
    assert raised_in_project(ours.value) and user_error_message(ours.value).startswith("error: pretrain.global_batch")
    with pytest.raises(ValueError) as library:
        json.loads("{")  # a ValueError from the standard library: a bug when it reaches an entry point
    assert not raised_in_project(library.value) and user_error_message(library.value) is None
    with pytest.raises(FileNotFoundError) as opened:
        open("/no/such/file")  # noqa: SIM115 - raised in this test file, not in proxy-exp
    assert user_error_message(opened.value) is None


_BUG = """
import numpy as np
from launchers.app import run_app
run_app(lambda cfg: np.reshape(np.arange(6), (4, 4)), None)
"""


def test_internal_error_keeps_its_traceback_and_exits_1():
    r = subprocess.run([sys.executable, "-c", _BUG], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert r.returncode == 1, r.stderr[-2000:]
    assert "Traceback" in r.stderr and "ValueError" in r.stderr and "cannot reshape" in r.stderr
    assert "internal error: ValueError is a bug in proxy-exp" in r.stderr
    assert not [line for line in r.stderr.splitlines() if line.startswith("error:")]
