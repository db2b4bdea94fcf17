"""Bad input from storage and services (issue 14): each ends with one clear line and leaves no partial result that
looks complete. A loss that turns NaN, an MLflow URI that does not answer, an output folder that cannot be written,
a disk that fills while a checkpoint is saved (a small tmpfs), a corrupt per-token Parquet and a truncated
checkpoint (both caught by the checksums their markers record)."""
import contextlib
import glob
import json
import os
import subprocess
import time

import pytest

from tests.helpers import (FIXTURE_TRACE_OVERRIDES, FIXTURE_TRACES, flip_a_byte, read_jsonl, run_cli, runs_of, save_tiny_llama,
                           tiny_train_cfg)

pytestmark = [pytest.mark.slow, pytest.mark.integration]

# proxy-train overrides for the model and data of tests.helpers.tiny_train_cfg: 20 steps, a checkpoint every 5
TINY_TRAIN = ["model.max_seq_len=64", "pretrain.seq_len=64", "pretrain.global_batch=16", "pretrain.micro_batch=8",
              "pretrain.max_tokens=20480", "pretrain.checkpoint_every=5", "tokenizer.vocab_size=512",
              "tokenizer.sample_bytes_per_corpus=200000", "corpus.max_bytes=400000"]


def _error_lines(r: subprocess.CompletedProcess) -> list[str]:
    return [line for line in r.stderr.splitlines() if line.startswith("error:")]


def _one_clear_line(r: subprocess.CompletedProcess, *said: str) -> str:
    """The single ``error:`` line of a run that exited 2 without a traceback, checked to say each of ``said``."""
    out = r.stdout + r.stderr
    assert r.returncode == 2, out[-3000:]
    assert "Traceback" not in out, out[-3000:]
    (line,) = _error_lines(r)
    for s in said:
        assert s in line, line
    return line


@contextlib.contextmanager
def _tmpfs(path, options: str):
    """A tmpfs mounted at ``path`` (``options`` as ``mount -o``) for the test's duration (root only)."""
    os.makedirs(path, exist_ok=True)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.fail(f"cannot mount a tmpfs at {path} ({r.stderr.strip()}): these tests need root with CAP_SYS_ADMIN "
                    "(as install.sh test and the suite run in CI); run the suite as root, e.g. sudo -E "
                    ".venv/bin/python -m pytest -q")
    try:
        yield str(path)
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    """A random 2-layer Llama with a BPE tokenizer of the fixture traces, as an HF folder."""
    texts = [t["prompt"] + t["solution"] for t in read_jsonl(FIXTURE_TRACES)]
    return save_tiny_llama(str(tmp_path_factory.mktemp("model") / "tiny"), texts * 3, vocab_size=400)


# ------------------------------------------------------------------------------ NaN / inf loss
def test_nan_loss_stops_keeps_the_last_good_checkpoint_and_marks_the_unit_failed(tmp_path):
    from launchers.app import user_error_message
    from proxy_exp.errors import TrainingDiverged
    from proxy_exp.train.checkpoint import latest_checkpoint
    from proxy_exp.train.job import default_unit_id, train

    # Adam's first steps move every weight by ~lr: at 1e30 the fp32 weights overflow within a few steps
    cfg = tiny_train_cfg(tmp_path, experiment="nan", steps=40, checkpoint_every=2, lr=1e30, warmup_frac=0.0)
    with pytest.raises(TrainingDiverged) as caught:
        train(cfg, progress=False)
    message = str(caught.value)
    assert "train/loss is nan" in message or "train/loss is inf" in message, message
    diverged_at = int(message.split(" at step ")[1].split()[0])
    line = user_error_message(caught.value)
    assert line.startswith("error: train/loss is") and "\n" not in line and "pretrain.lr" in line, line

    udir = tmp_path / "units" / default_unit_id(cfg)
    ckpts = str(udir / "checkpoints")
    last = latest_checkpoint(ckpts)
    assert last is not None and 0 < last < diverged_at, (last, diverged_at)  # the last good one is kept, intact
    assert f"the last good one is step-{last}" in message
    assert not glob.glob(f"{ckpts}/step-{diverged_at}*"), "a checkpoint of the diverged step was saved"
    assert not (udir / "DONE.json").exists() and not (udir / "model").exists()
    failed = json.loads((udir / "FAILED.json").read_text())
    assert failed["reason"].startswith("TrainingDiverged: train/loss is"), failed
    (run,) = runs_of(tmp_path, "nan", kind="train")
    assert run.info.status == "FAILED"
    assert run.data.tags["proxy_exp.failure"].startswith("TrainingDiverged: train/loss is")


# ------------------------------------------------------------------------------ an MLflow URI that does not answer
def test_mlflow_uri_that_does_not_answer_is_one_line_and_leaves_no_unit(tmp_path, tiny_model):
    t0 = time.time()
    r = run_cli("proxy-score", "tracking.uri=http://127.0.0.1:9", f"model.path={tiny_model}", f"paths.root={tmp_path}",
                *FIXTURE_TRACE_OVERRIDES, ok=False, timeout=120)
    took = time.time() - t0
    line = _one_clear_line(r, "http://127.0.0.1:9", "does not answer", "proxy-mlflow-server start", "tracking.uri")
    assert took < 30, f"{took:.0f} s to say {line}"
    assert "Retrying" not in r.stdout + r.stderr  # urllib3's retry warnings are not shown besides it
    assert not glob.glob(f"{tmp_path}/units/score-*"), os.listdir(tmp_path / "units")


# ------------------------------------------------------------------------------ an output folder that is not writable
# Tests run as root, for whom chmod does not stop a write: a read-only tmpfs does.
def test_output_folder_not_writable_is_one_line_naming_it(tmp_path, tiny_model):
    with _tmpfs(tmp_path / "ro", "size=1m,ro") as ro:
        r = run_cli("proxy-score", f"model.path={tiny_model}", f"paths.root={ro}", f"hydra.run.dir={tmp_path}/hydra",
                    *FIXTURE_TRACE_OVERRIDES, ok=False, timeout=120)
        _one_clear_line(r, f"cannot write {ro}", "Read-only file system", "paths.root")
        assert os.listdir(ro) == []


def test_output_folder_not_writable_with_the_default_hydra_folder(tmp_path, tiny_model):
    with _tmpfs(tmp_path / "ro", "size=1m,ro") as ro:
        r = run_cli("proxy-score", f"model.path={tiny_model}", f"paths.root={ro}", *FIXTURE_TRACE_OVERRIDES, ok=False,
                    timeout=120)
        _one_clear_line(r, ro, "paths.root")


# ------------------------------------------------------------------------------ disk full while saving a checkpoint
def test_disk_full_while_saving_a_checkpoint_keeps_the_complete_ones_and_resumes(tmp_path):
    from proxy_exp.train.checkpoint import latest_checkpoint

    store = f"tracking.uri=sqlite:///{tmp_path}/mlflow.db"  # the store elsewhere: only the unit's files fill the disk
    # ~570 KiB of tokenizer and token shards, then ~540 KiB a checkpoint: step-5 fits, step-10 does not
    with _tmpfs(tmp_path / "small", "size=1400k") as root:
        args = [*TINY_TRAIN, f"paths.root={root}", store, f"hydra.run.dir={tmp_path}/hydra"]
        r = run_cli("proxy-train", *args, ok=False, timeout=300)
        line = _one_clear_line(r, "disk is full", "checkpoint step-", f"{root}/units/", "Free space", "rerun")
        (udir,) = glob.glob(f"{root}/units/train-*")
        ckpts = os.path.join(udir, "checkpoints")
        steps = sorted(d for d in os.listdir(ckpts) if d.startswith("step-"))
        assert steps, f"no complete checkpoint before the disk filled: {line}"
        for d in steps:  # the partial checkpoint is gone; every one left is complete and intact
            assert os.path.exists(os.path.join(ckpts, d, "COMPLETE")), d
        assert latest_checkpoint(ckpts) == int(steps[-1].split("-")[1])
        assert f"complete checkpoints kept: {', '.join(steps)}" in line, line
        assert not os.path.exists(os.path.join(udir, "DONE.json")) and not os.path.exists(os.path.join(udir, "model"))
        assert json.load(open(os.path.join(udir, "FAILED.json")))["reason"].startswith("OutputNotWritable: the disk")
        assert not glob.glob(f"{udir}/**/*.tmp*", recursive=True)

        subprocess.run(["mount", "-o", "remount,size=4m", root], check=True)  # space freed: the rerun resumes
        r = run_cli("proxy-train", *args, timeout=300)
        assert os.path.exists(os.path.join(udir, "DONE.json")) and not os.path.exists(os.path.join(udir, "FAILED.json"))
        assert "20 steps" in r.stdout, r.stdout[-2000:]


# ------------------------------------------------------------------------------ corrupt Parquet, truncated checkpoint
def test_corrupt_per_token_parquet_is_recomputed_never_used(tmp_path, tiny_model, capfd):
    import pandas as pd

    from proxy_exp.config import ModelConfig, PathsConfig, ScoreConfig, ScoreJobConfig, TracesConfig, TrackingConfig
    from proxy_exp.score.job import score

    def run():
        return score(ScoreJobConfig(model=ModelConfig(arch="pretrained", path=tiny_model),
                                    traces=TracesConfig(name="fixture", source="jsonl", tasks=[], per_task=2,
                                                        paths=[FIXTURE_TRACES]),
                                    score=ScoreConfig(), paths=PathsConfig(root=str(tmp_path)),
                                    tracking=TrackingConfig(experiment="corrupt")), progress=False)

    first = run()
    udir = os.path.dirname(first.tokens_path)
    expected = pd.read_parquet(first.tokens_path)
    assert run().run_id == first.run_id  # intact: read back, not recomputed
    flip_a_byte(first.tokens_path)
    capfd.readouterr()
    again = run()
    assert "tokens.parquet does not match its checksum (corrupt)" in capfd.readouterr().err
    assert again.run_id != first.run_id  # recomputed, in a new run
    assert os.path.exists(os.path.join(udir, "DONE.json.invalid"))
    pd.testing.assert_frame_equal(pd.read_parquet(again.tokens_path), expected)
    assert again.proxies == first.proxies
    assert run().run_id == again.run_id  # and the recomputed unit is done again
    assert len(runs_of(tmp_path, "corrupt", kind="score")) == 2


def test_truncated_checkpoint_is_not_resumed_from_and_the_final_loss_is_unchanged(tmp_path, capfd):
    from proxy_exp.train.checkpoint import latest_checkpoint
    from proxy_exp.train.job import default_unit_id, train

    reference = train(tiny_train_cfg(tmp_path / "reference", steps=20, checkpoint_every=5), progress=False)
    root = tmp_path / "truncated"
    cfg = tiny_train_cfg(root, steps=20, checkpoint_every=5, keep_checkpoints=0, stop_after_steps=15)
    stopped = train(cfg, progress=False)
    assert stopped.stopped and stopped.steps == 15
    ckpts = str(root / "units" / default_unit_id(cfg) / "checkpoints")
    (states,) = glob.glob(f"{ckpts}/step-15/*model_states.pt")
    with open(states, "r+b") as f:
        f.truncate(os.path.getsize(states) // 2)
    capfd.readouterr()
    cfg.pretrain.stop_after_steps = 0
    resumed = train(cfg, progress=False)
    err = capfd.readouterr().err
    assert "checkpoint step-15" in err and "damaged" in err and "truncated" in err, err[-3000:]
    assert os.path.isdir(f"{ckpts}/corrupt-step-15")  # moved aside, never loaded
    assert resumed.final_loss == reference.final_loss  # resumed from step-10: the same data, bit-exact on CPU
    assert latest_checkpoint(ckpts) == 20
