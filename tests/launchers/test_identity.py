"""Identity a data team can iterate on: a unit's id depends only on what determines its result. Adding, removing or
reweighting a recipe changes only that recipe's units, under OLMo's tokenizer and the campaign's own BPE alike; a
weight-0 source is not part of a recipe; an upgrade of scoring or of an embedded task reruns only what it changed."""
from __future__ import annotations

import copy

import pytest

from launchers.app import to_job
from launchers.plan import plan_campaign
from proxy_exp import units
from proxy_exp.config import CampaignJobConfig
from tests.helpers import compose


def _job(tokenizer: str) -> CampaignJobConfig:
    return to_job(compose("campaign", ["paths.root=/identity/root", f"tokenizer={tokenizer}"]), CampaignJobConfig)


def _ids(job: CampaignJobConfig) -> dict[str, str]:
    return {f"{u.kind} {u.role} {u.corpus} {u.size} {u.seed} {u.id if u.kind in ('bpe', 'tokenize') else ''}": u.id
            for u in plan_campaign(job)}


def _changed(before: dict[str, str], after: dict[str, str]) -> set[str]:
    """The units (by place) whose id differs or that only one plan has."""
    return {k for k in before.keys() | after.keys() if before.get(k) != after.get(k)}


def _of(keys: set[str], corpus: str) -> bool:
    return bool(keys) and all(k.split()[2] == corpus for k in keys)


@pytest.mark.parametrize("tokenizer", ["bpe", "olmo"])
def test_a_recipe_added_removed_or_reweighted_changes_only_its_own_units(tokenizer):
    base_job = _job(tokenizer)
    base = _ids(base_job)
    n_recipe = sum(k.split()[2] == "wiki50" for k in base)
    # removed
    job = copy.deepcopy(base_job)
    del job.campaign.corpora["wiki50"]
    assert _of(_changed(base, _ids(job)), "wiki50")
    # reweighted (over the same sources)
    job = copy.deepcopy(base_job)
    job.campaign.corpora["wiki50"].mix["wiki"].weight = 0.45
    changed = _changed(base, _ids(job))
    assert _of(changed, "wiki50") and len(changed) == n_recipe
    # added: a new recipe over the same sources
    job = copy.deepcopy(base_job)
    new = copy.deepcopy(job.campaign.corpora["wiki50"])
    new.name = "wiki40"
    new.mix["wiki"].weight = 0.4
    job.campaign.corpora["wiki40"] = new
    changed = _changed(base, _ids(job))
    assert _of(changed, "wiki40") and len(changed) == n_recipe


def test_a_weight_0_source_is_not_part_of_a_recipe():
    """wiki100 lists code, plays and math at weight 0: what those entries would read does not name its units."""
    base_job = _job("olmo")
    base = _ids(base_job)
    job = copy.deepcopy(base_job)
    job.campaign.corpora["wiki100"].mix["code"].max_bytes = 12_345
    assert _changed(base, _ids(job)) == set()
    job = copy.deepcopy(base_job)
    job.campaign.corpora["wiki100"].mix["code"].weight = 0.01  # read now: its units change, only its own
    assert _of(_changed(base, _ids(job)), "wiki100")


def test_an_upgrade_reruns_what_it_changed_and_nothing_else(monkeypatch):
    """Score ids carry SCORE_VERSION with the statistics' and weightings' names; evaluate ids lm-eval's version and
    each embedded task's metadata.version."""
    job = _job("olmo")
    base = _ids(job)
    kinds = {k: k.split()[0] for k in base}
    monkeypatch.setattr(units, "SCORE_VERSION", units.SCORE_VERSION + 1)
    changed = _changed(base, _ids(job))
    assert changed == {k for k, kind in kinds.items() if kind == "score"} != set()
    monkeypatch.undo()

    from proxy_exp.evaluate import task_data

    real = task_data.embedded_task_yaml

    def bumped(task):
        y = real(task)
        y.setdefault("metadata", {})["version"] = 2.0
        return y

    monkeypatch.setattr(task_data, "embedded_task_yaml", bumped)
    units._embedded_task_version.cache_clear()  # read once per process: an upgrade is a new process
    try:
        changed = _changed(base, _ids(job))
    finally:
        units._embedded_task_version.cache_clear()
    assert changed == {k for k, kind in kinds.items() if kind == "evaluate"} != set()
