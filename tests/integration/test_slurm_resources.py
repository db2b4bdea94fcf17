"""Each unit kind's resources as the real local Slurm cluster records them (scontrol show job): a campaign submitted
held, with different CPUs, memory and time limits for its data (bpe, tokenize), train, score and evaluate units."""
import re
import subprocess

import pytest

import launchers.app as app
from launchers.plan import plan_campaign
from launchers.submit import submit_slurm
from proxy_exp import config as C

pytestmark = [pytest.mark.slow, pytest.mark.integration]
WANT = {"data": (2, "1G", "00:05:00"), "train": (2, "1G", "00:07:00"), "score": (1, "2G", "00:09:00"),
        "evaluate": (3, "3G", "00:11:00")}
GROUP = {"bpe": "data", "tokenize": "data"}  # executor.<group> of each unit kind


def _job(job_id: str) -> dict[str, str]:
    out = subprocess.run(["scontrol", "show", "job", "-o", job_id], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return dict(re.findall(r"(\w+)=(\S+)", out.stdout))


def test_unit_kinds_get_their_own_slurm_resources(slurm_cluster, tmp_path, compose_cfg):
    overrides = [f"paths.root={tmp_path}", "campaign=tiny", "executor=slurm_local", "executor.max_parallel=4"]
    for kind, (cpus, mem, minutes) in WANT.items():
        overrides += [f"executor.{kind}.cpus_per_task={cpus}", f"executor.{kind}.mem_gb={mem[:-1]}",
                      f"executor.{kind}.timeout_min={int(minutes.split(':')[1])}"]
    # the target models' evaluations ask for their own CPUs and time limit (executor.target.evaluate)
    overrides += ["executor.target.evaluate.cpus_per_task=1", "executor.target.evaluate.timeout_min=13"]
    job = app.to_job(compose_cfg("campaign", overrides), C.CampaignJobConfig)
    job.executor.additional_parameters["hold"] = True  # sbatch --hold: submitted, recorded, never started
    plan = plan_campaign(job)
    records = submit_slurm(plan, {u.id for u in plan}, {}, job.executor, str(tmp_path / "submitit" / "%j"))
    try:
        seen = set()
        for u in plan:
            info = _job(records[u.id]["job_id"])
            cpus, mem, limit = WANT[GROUP.get(u.kind, u.kind)]
            if (u.kind, u.role) == ("evaluate", "target"):
                cpus, limit = 1, "00:13:00"
            assert (int(info["NumCPUs"]), info["MinMemoryNode"], info["TimeLimit"]) == (cpus, mem, limit), (u.kind, info)
            assert info["JobState"] == "PENDING"  # held: nothing ran
            # tokenize waits for the BPE, train for its tokenize tasks, score / evaluate for their training unit
            assert ("afterok" in info.get("Dependency", "")) == bool(u.depends_on), (u.kind, info)
            assert info.get("TresPerNode", "").find("gpu") < 0  # none asked for a GPU (executor.gpus_per_node=0)
            seen.add(u.kind)
        assert seen == {"bpe", "tokenize", "train", "score", "evaluate"}
        assert {u.role for u in plan if u.kind == "evaluate"} == {"proxy", "target"}  # both shapes were read back
    finally:
        subprocess.run(["scancel", *{r["job_id"].split("_")[0] for r in records.values()}], timeout=60)
