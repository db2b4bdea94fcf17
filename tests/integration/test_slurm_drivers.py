"""Campaign drivers at once, on the real local Slurm cluster (slurm/cluster.sh): two `proxy-campaign` drivers started
together on one small campaign submit each unit once, the job record names the job that runs each unit, both share one
parent MLflow run; and `executor.max_parallel` caps the campaign's running jobs across all unit kinds."""
import json
import os
import subprocess
import time

import pytest
from mlflow.tracking import MlflowClient

from launchers.app import to_job
from launchers.campaign import campaign_dir
from launchers.plan import plan_campaign
from launchers.state import _expand, campaign_lock
from proxy_exp.config import CampaignJobConfig
from proxy_exp.tracking import ensure_experiment
from tests.helpers import BIN, SLURM_CAMPAIGN, cli_env, compose, run_cli, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.integration]
MAX_PARALLEL = 2
# two corpora, only the targets evaluated: 11 units, every kind (1 bpe, 2 tokenize, 4 train, 2 score, 2 evaluate)
OVERRIDES = SLURM_CAMPAIGN + ["~campaign.corpora.wikipedia", "campaign.evaluate_proxies=false",
                              f"executor.max_parallel={MAX_PARALLEL}", "tracking.experiment=drivers"]
WAITING = "another driver is submitting this campaign"


def _sacct_since(start: str) -> dict[str, tuple[str, str, str, str]]:
    """Every job (array tasks one each) Slurm accounted since ``start``: id -> (name, state, start, end)."""
    out = subprocess.run(["sacct", "-n", "-X", "-P", "-S", start, "-o", "JobID,JobName,State,Start,End"],
                         capture_output=True, text=True, check=True).stdout
    rows = {}
    for line in out.splitlines():
        job, name, state, t0, t1 = line.split("|")
        for j in _expand(job):
            rows[j] = (name, state.split()[0], t0, t1)
    return rows


@pytest.fixture(scope="module")
def campaign(slurm_cluster, tmp_path_factory):
    """Two drivers started together; the status right after; then the campaign run to its end."""
    root = tmp_path_factory.mktemp("drivers")
    overrides = OVERRIDES + [f"paths.root={root}"]
    job = to_job(compose("campaign", overrides), CampaignJobConfig)
    ensure_experiment(job.tracking, str(root))
    cdir = campaign_dir(job, plan_campaign(job))
    start = time.strftime("%Y-%m-%dT%H:%M:%S")
    # Both drivers reach the submit section while this test holds the campaign lock, so they really contend for it
    # (left alone, one might finish before the other starts), then race for it once it is released.
    logs = [open(root / f"driver{i}.err", "w+") for i in range(2)]
    with campaign_lock(cdir):
        procs = [subprocess.Popen([os.path.join(BIN, "proxy-campaign"), *overrides], stdout=subprocess.PIPE,
                                  stderr=log, text=True, env=cli_env()) for log in logs]
        wait_for(lambda: all(WAITING in open(log.name).read() for log in logs) or
                 any(p.poll() is not None for p in procs), 300, "both drivers to wait for the campaign lock")
    drivers = [(p.communicate(timeout=600)[0], open(log.name).read(), p.returncode) for p, log in zip(procs, logs)]
    assert all(rc == 0 for *_, rc in drivers), drivers
    status = run_cli("proxy-campaign", *overrides, "action=status").stdout

    def settled():
        out = run_cli("proxy-campaign", *overrides, "action=status").stdout
        return "pending" not in out and "running" not in out

    wait_for(settled, 900, "the campaign's units to end", poll_s=5)
    jobs = json.load(open(f"{cdir}/slurm_jobs.json"))
    ids = {r["job_id"] for r in jobs.values()}
    acct = {}

    def accounted():  # the accounting record lags a job's end by a second or two
        acct.update(_sacct_since(start))
        return all(j in acct and acct[j][1] not in ("RUNNING", "PENDING") for j in ids)

    wait_for(accounted, 60, "sacct's records of the campaign's jobs")
    return {"root": root, "cdir": cdir, "drivers": drivers, "status": status, "jobs": jobs, "acct": acct,
            "final": run_cli("proxy-campaign", *overrides, "action=status").stdout}


def test_two_drivers_submit_each_unit_once(campaign):
    units = json.load(open(f"{campaign['cdir']}/units.json"))
    n = len(units)
    assert n == 11 and {u["kind"] for u in units} == {"bpe", "tokenize", "train", "score", "evaluate"}
    assert all(WAITING in err for _, err, _ in campaign["drivers"])  # both drivers met the lock held
    said = sorted(int(out.split("submitted ")[1].split()[0]) for out, _, _ in campaign["drivers"])
    assert said == [0, n], campaign["drivers"]  # one driver submitted all, the other nothing
    jobs = campaign["jobs"]
    assert sorted(jobs) == sorted(u["id"] for u in units)
    # every job of this campaign (its lanes' job names) Slurm ran since the drivers started is a job of the record: no
    # idle second copy of any unit (jobs of earlier tests may still be accounted in the window)
    lanes = f"proxy-{os.path.basename(campaign['cdir'])}-lane"
    ran = {j for j, (name, *_rest) in campaign["acct"].items() if name.startswith(lanes)}
    assert ran == {r["job_id"] for r in jobs.values()}, (sorted(ran), jobs)
    # the status right after both drivers shows each unit in the job of the record (the first may be done already)
    for u in units:
        line = next(line for line in campaign["status"].splitlines() if u["id"] in line)
        assert line.split()[0] in ("pending", "running", "done") and f"job {jobs[u['id']]['job_id']}" in line, line
    assert f"{n} done ({n} units)" in campaign["final"], campaign["final"]
    assert all(campaign["acct"][r["job_id"]][1] == "COMPLETED" for r in jobs.values()), campaign["acct"]
    # one parent run, shared by both drivers and named in the campaign folder
    c = MlflowClient(f"sqlite:///{campaign['root']}/mlflow.db")
    parents = c.search_runs([c.get_experiment_by_name("drivers").experiment_id],
                            filter_string="tags.`proxy_exp.kind` = 'campaign'")
    assert [r.info.run_id for r in parents] == [open(f"{campaign['cdir']}/parent_run_id").read().strip()]


def test_max_parallel_caps_running_jobs_across_kinds(campaign):
    """At no time do more than executor.max_parallel of the campaign's jobs run (sacct's start and end times), across
    its bpe, tokenize, train, score and evaluate jobs."""
    jobs = campaign["jobs"]
    spans = {j: campaign["acct"][j][2:] for j in {r["job_id"] for r in jobs.values()}}
    events = sorted([(t0, 1) for t0, _ in spans.values()] + [(t1, -1) for _, t1 in spans.values()])  # ends first
    running, most = 0, 0
    for _, step in events:
        running += step
        most = max(most, running)
    print(f"\n{len(spans)} jobs of {len(jobs)} units; at most {most} running at once (max_parallel={MAX_PARALLEL})")
    kinds = {r["kind"] for r in jobs.values()}
    assert kinds == {"bpe", "tokenize", "train", "score", "evaluate"}
    assert most <= MAX_PARALLEL, sorted(spans.items(), key=lambda kv: kv[1])
    assert most == MAX_PARALLEL  # and the lanes did run side by side
    assert {r["lane"] for r in jobs.values()} == set(range(MAX_PARALLEL))
