"""Tokenization as Slurm work on the real local cluster: the campaign's BPE as a job, a JSON-lines corpus's two
files as a two-task job array after it, and training as a job that waits for both tasks (afterok)."""
import subprocess
import time

import pytest
import submitit

import launchers.app as app
from launchers.plan import plan_campaign
from launchers.submit import submit_slurm
from proxy_exp import units
from proxy_exp.config import CampaignJobConfig, CorpusConfig
from tests.helpers import compose, packaged_records, write_jsonl

pytestmark = [pytest.mark.slow, pytest.mark.integration]


def _sacct(job_id: str) -> dict[str, tuple[str, str, str]]:
    out = subprocess.run(["sacct", "-n", "-X", "-P", "-j", job_id, "-o", "JobID,State,Start,End"],
                         capture_output=True, text=True, check=True).stdout
    return {f[0]: (f[1], f[2], f[3]) for f in (line.split("|") for line in out.splitlines() if line)}


def test_tokenize_array_then_training_after_it(slurm_cluster, tmp_path):
    (tmp_path / "wiki").mkdir()
    recs = packaged_records("wikipedia", 300)
    for i in range(2):
        write_jsonl(tmp_path / "wiki" / f"part-{i}.jsonl.gz", recs[i * 150:(i + 1) * 150])
    job = app.to_job(compose("campaign", [
        "campaign=tiny", "executor=slurm_local", f"paths.root={tmp_path / 'root'}", "tokenizer.vocab_size=512",
        "tokenizer.sample_bytes_per_corpus=50000", "pretrain.max_tokens=4096", "pretrain.seq_len=64",
        "pretrain.global_batch=8", "pretrain.micro_batch=8", "tracking.experiment=slurm-data",
        "tokenize.max_tasks=2", "tokenize.threads=2",
        "executor.max_parallel=1"]), CampaignJobConfig)  # one lane: the two tokenize tasks stay one array
    job.campaign.corpora = {
        "wiki_jsonl": CorpusConfig(name="wiki_jsonl", source="jsonl", paths=[str(tmp_path / "wiki")]),
        "plays": CorpusConfig(name="plays", source="shakespeare", max_bytes=100_000)}
    plan = plan_campaign(job)
    bpe = next(u for u in plan if u.kind == "bpe")
    toks = [u for u in plan if u.kind == "tokenize" and u.corpus == "wiki_jsonl"]
    train = next(u for u in plan if u.kind == "train" and u.corpus == "wiki_jsonl" and u.role == "proxy")
    assert len(toks) == 2 and set(train.depends_on) == {t.id for t in toks}
    t0 = time.time()
    folder = str(tmp_path / "submitit" / "%j")
    records = submit_slurm(plan, {bpe.id, train.id, *(t.id for t in toks)}, {}, job.executor, folder)
    assert time.time() - t0 < 60  # submits and returns
    (array,) = {records[t.id]["job_id"].split("_")[0] for t in toks}  # one array ...
    assert sorted(records[t.id]["job_id"] for t in toks) == [f"{array}_0", f"{array}_1"]  # ... of two tasks
    shown = subprocess.run(["scontrol", "show", "job", records[train.id]["job_id"]], capture_output=True,
                           text=True).stdout
    for t in toks:
        assert records[t.id]["job_id"] in shown.split("Dependency=")[1].split()[0], shown
    result = submitit.SlurmJob(folder=folder, job_id=records[train.id]["job_id"]).result()
    assert result.steps == 8 and units.read_done(job.paths.root, train.id) is not None
    for t in toks:
        assert units.read_done(job.paths.root, t.id)["tokens"] > 0
    tok_job = records[toks[0].id]["job_id"].split("_")[0]
    acct = _sacct(tok_job) | _sacct(records[train.id]["job_id"])
    tasks = [v for k, v in acct.items() if k.startswith(tok_job + "_")]
    assert len(tasks) == 2 and all(state == "COMPLETED" for state, _, _ in tasks), acct
    train_start = acct[records[train.id]["job_id"]][1]
    assert all(end <= train_start for _, _, end in tasks), acct  # training started after both tasks ended
