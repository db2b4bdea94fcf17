"""A campaign's analysis reads that campaign's runs only (searched by its tag), never the whole experiment, plus the
runs of its units that another campaign logged first (shared units run once)."""
from __future__ import annotations

import json

from analysis.reports import RUNS_READ, analyze_campaign
from analysis.runs import campaign_runs
from proxy_exp.config import AnalysisConfig, TrackingConfig
from proxy_exp.tracking import Run, query, tracking_uri
from tests.helpers import CORPORA, synthetic_records

EXPERIMENT = "two-campaigns"
N_BOOT = 20  # few resamples: this test is about what is read


def _log(cfg: TrackingConfig, root, campaign: str, recs: list[dict], planned_ids: list[str]) -> str:
    """A campaign's parent run (with its plan/units.json) and its unit runs; returns the parent's id."""
    with Run(cfg, str(root), f"campaign {campaign}", {"proxy_exp.kind": "campaign", "proxy_exp.campaign": campaign},
             ) as parent:
        plan = root / campaign / "units.json"
        plan.parent.mkdir()
        plan.write_text(json.dumps([{"id": uid, "campaign": campaign, "kind": uid.split("-")[1]}
                                    for uid in planned_ids]))
        parent.log_artifact(str(plan), "plan")
    for r in recs:
        with Run(cfg, str(root), r["tags"]["proxy_exp.unit_id"], r["tags"], parent_run_id=parent.run_id) as run:
            run.log_metrics(r["metrics"])
    return parent.run_id


def test_a_campaign_reads_only_its_own_runs(tmp_path):
    cfg = TrackingConfig(experiment=EXPERIMENT)
    uri = tracking_uri(cfg, str(tmp_path))
    ours = synthetic_records(CORPORA, [0], [0], campaign="ours")
    theirs = synthetic_records(CORPORA, [0, 1], [0], campaign="theirs")
    ids = [r["tags"]["proxy_exp.unit_id"] for r in ours]
    shared = theirs[0]["tags"]["proxy_exp.unit_id"]  # planned by both; its run is tagged with the campaign that ran it
    parent = _log(cfg, tmp_path, "ours", ours, ids)
    _log(cfg, tmp_path, "theirs", theirs, [r["tags"]["proxy_exp.unit_id"] for r in theirs])
    everything = len(query.runs_frame(uri, EXPERIMENT))
    assert everything == len(ours) + len(theirs) + 2  # and two campaign parents

    runs = campaign_runs(uri, EXPERIMENT, "ours", ids)
    assert sorted(runs["tags.proxy_exp.unit_id"].dropna()) == sorted(ids)
    with_shared = campaign_runs(uri, EXPERIMENT, "ours", [*ids, shared])
    assert len(with_shared) == len(runs) + 1 and shared in set(with_shared["tags.proxy_exp.unit_id"])

    report = analyze_campaign(cfg, str(tmp_path), parent, str(tmp_path / "out"),
                              AnalysisConfig(plots=False, n_boot=N_BOOT))
    assert not report.methods.empty
    (analysis,) = query.find_runs(uri, EXPERIMENT, "tags.`proxy_exp.kind` = 'analyze'")
    assert analysis.data.metrics[RUNS_READ] == len(runs) < everything


def test_a_later_analysis_judges_by_the_truth_the_campaign_ran_with(tmp_path):
    """proxy-campaign records its evaluate.primary_metric on the parent run (tag proxy_exp.truth_metric);
    proxy-analyze campaign_name=... reads it there instead of a default of its own; a parent without it (a campaign
    from before the tag) is judged by the default, and the report says so."""
    from proxy_exp.config import LOGPROB_PER_CHAR
    from proxy_exp.tracking import keys

    cfg = TrackingConfig(experiment=EXPERIMENT)
    recs = synthetic_records(CORPORA, [0], [0], campaign="acc")
    parent = _log(cfg, tmp_path, "acc", recs, [r["tags"]["proxy_exp.unit_id"] for r in recs])
    acfg = AnalysisConfig(plots=False, n_boot=N_BOOT)
    old = analyze_campaign(cfg, str(tmp_path), parent, str(tmp_path / "old"), acfg)
    assert old.truth_metric == LOGPROB_PER_CHAR and any(keys.tag(keys.TRUTH_METRIC) in n for n in old.notes)

    Run(cfg, str(tmp_path), "campaign acc", run_id=parent, reopen=False).set_tags({keys.tag(keys.TRUTH_METRIC): "acc"})
    report = analyze_campaign(cfg, str(tmp_path), parent, str(tmp_path / "new"), acfg)
    target_acc = {r["tags"]["proxy_exp.corpus"]: r["metrics"]["eval/mean/acc"] for r in recs
                  if r["tags"]["proxy_exp.kind"] == "evaluate" and r["tags"]["proxy_exp.role"] == "target"}
    assert report.truth_metric == "acc" and not any(keys.tag(keys.TRUTH_METRIC) in n for n in report.notes)
    assert report.truth.to_dict() == target_acc
