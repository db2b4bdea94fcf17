"""Golden files of the launchers (tests/golden/README.md): unit ids of campaign plans, a unit's sbatch script."""
import json

import pytest

import launchers.app as app
from launchers.plan import plan_campaign
from proxy_exp import config as C
from tests.helpers import golden

pytestmark = pytest.mark.golden

PLANS = {"mini": ["campaign=mini"], "tiny": ["campaign=tiny"],
         "mini_2seeds": ["campaign=mini", "campaign.seeds=[0,1]", "campaign.target_seeds=[0,1]"],
         "datadecide": ["campaign=mini", "pretrain=datadecide"],
         "pretrained_tok": ["campaign=mini", "tokenizer=pretrained", "tokenizer.path=/abs/tok"],
         "recipes (the default)": []}


def test_unit_ids_never_drift(compose_cfg):
    ids = {}
    for name, overrides in PLANS.items():
        job = app.to_job(compose_cfg("campaign", ["paths.root=/golden/root"] + overrides), C.CampaignJobConfig)
        ids[name] = {f"{u.kind} {u.role} {u.corpus} {u.size} {u.seed}": u.id for u in plan_campaign(job)}
    expected = json.loads(golden("unit_ids.json", json.dumps(ids, indent=1, sort_keys=True)))
    assert ids == expected


def test_sbatch_script_of_a_unit():
    from launchers.submit import make_executor

    ex = make_executor(C.ExecutorConfig(kind="slurm", partition="debug", timeout_min=30, cpus_per_task=2,
                                        gpus_per_node=1, account="acct", setup=["module load cuda"]),
                       "/golden/folder/%j")
    ex.update_parameters(name="proxy-score-abc")
    text = ex._executor._make_submission_file_text("python -u -m submitit.core._submit /golden/folder/%j", "uid")
    assert text == golden("sbatch_score.sh", text)
