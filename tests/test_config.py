"""Every entry point's config and every group option composes; bad keys and types fail with their name."""
import os
import subprocess
import sys

import pytest
from hydra.errors import ConfigCompositionException
from omegaconf.errors import ConfigKeyError, ValidationError

import launchers.app as app
from proxy_exp import config as C

ENTRY = {"train": C.TrainJobConfig, "score": C.ScoreJobConfig, "evaluate": C.EvalJobConfig,
         "campaign": C.CampaignJobConfig, "analyze": C.AnalyzeJobConfig}
NEEDS_PATH = {"score", "evaluate"}


def _options(group: str) -> list[str]:
    d = os.path.join(app.CONF_DIR, group)
    return sorted(f[:-5] for f in os.listdir(d) if f.endswith(".yaml"))


@pytest.mark.parametrize("name", sorted(ENTRY))
def test_entry_point_composes_to_schema(compose_cfg, name):
    cfg = compose_cfg(name, ["model.path=/tmp/m"] if name in NEEDS_PATH else [])
    job = app.to_job(cfg, ENTRY[name])
    assert isinstance(job, ENTRY[name])


GROUP_ENTRY = {"model": "train", "tokenizer": "train", "corpus": "train", "pretrain": "train", "traces": "score",
               "score": "score", "evaluate": "evaluate", "campaign": "campaign", "tracking": "train",
               "executor": "campaign", "analysis": "analyze", "experiment": "campaign"}


@pytest.mark.parametrize("group,option", [(g, o) for g in GROUP_ENTRY for o in _options(g)])
def test_every_group_option_composes(compose_cfg, group, option):
    entry = GROUP_ENTRY[group]
    overrides = [f"{group}={option}"]
    if entry in NEEDS_PATH or (group == "model" and option == "hf"):
        overrides.append("model.path=/tmp/m")
    if group == "traces" and option == "jsonl":
        overrides.append("traces.paths=[/tmp/t.jsonl]")
    if group == "tokenizer" and option == "pretrained":
        overrides.append("tokenizer.path=/tmp/tok")
    job = app.to_job(compose_cfg(entry, overrides), ENTRY[entry])
    assert isinstance(job, ENTRY[entry])


def test_campaign_groups_fill_typed_dicts(compose_cfg):
    job = app.to_job(compose_cfg("campaign"), C.CampaignJobConfig)
    assert set(job.campaign.corpora) == {"python_code", "shakespeare", "wikipedia", "llm_math"}
    assert all(isinstance(c, C.CorpusConfig) for c in job.campaign.corpora.values())
    assert isinstance(job.campaign.sizes["s"], C.ModelConfig) and job.campaign.sizes["s"].d_model == 64


def test_unknown_key_fails_with_its_name(compose_cfg):
    with pytest.raises(ConfigCompositionException, match="lrr"):
        compose_cfg("train", ["lrr=1"])
    with pytest.raises(ConfigCompositionException, match="n_lyr"):
        compose_cfg("train", ["model.n_lyr=3"])


def test_appended_key_is_caught_by_revalidation(compose_cfg):
    cfg = compose_cfg("train", ["+pretrain.lrr=1"])  # Hydra lets `+key` through ...
    with pytest.raises(ConfigKeyError, match="lrr"):  # ... the schema re-validation does not
        app.to_job(cfg, C.TrainJobConfig)


def test_wrong_type_fails_with_key(compose_cfg):
    with pytest.raises(ConfigCompositionException) as e:
        compose_cfg("train", ["pretrain.lr=abc"])
    assert "lr" in str(e.value.__cause__ or e.value)


def test_unknown_key_in_group_yaml_fails(tmp_path, compose_cfg):
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    conf = tmp_path / "conf"
    import shutil
    shutil.copytree(app.CONF_DIR, conf)
    (conf / "model" / "bad.yaml").write_text("name: bad\nn_layerz: 3\n")
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
        with pytest.raises(ConfigCompositionException, match="n_layerz"):
            compose(config_name="train", overrides=["model=bad"])


def test_cli_bad_key_is_one_clear_line(tmp_path):
    exe = os.path.join(os.path.dirname(sys.executable), "proxy-train")
    r = subprocess.run([exe, "+pretrain.lrr=1", f"paths.root={tmp_path}"], capture_output=True, text=True, timeout=120)
    assert r.returncode != 0
    assert "lrr" in r.stderr and "Traceback" not in r.stderr


def test_cli_dry_runs_print_plan(tmp_path):
    bindir = os.path.dirname(sys.executable)
    r = subprocess.run([os.path.join(bindir, "proxy-campaign"), "action=plan", f"paths.root={tmp_path}"],
                       capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stderr
    assert "24 units" in r.stdout and "train_flops" in r.stdout
    r = subprocess.run([os.path.join(bindir, "proxy-train"), "dry_run=true", f"paths.root={tmp_path}"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and '"steps"' in r.stdout
    assert not os.path.exists(tmp_path / "units")  # a dry run does nothing


def test_cfg_job_prints_config():
    exe = os.path.join(os.path.dirname(sys.executable), "proxy-score")
    r = subprocess.run([exe, "--cfg", "job", "model.path=/tmp/m"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "window: 1000" in r.stdout


def test_unit_ids_stable_and_sensitive():
    from proxy_exp import units
    m, t, c, p = C.ModelConfig(), C.TokenizerConfig(), C.CorpusConfig(), C.PretrainConfig()
    a = units.train_unit_id(m, t, {}, c, p, 0)
    assert a == units.train_unit_id(C.ModelConfig(), t, {}, c, C.PretrainConfig(log_every=99), 0)  # operational only
    assert a != units.train_unit_id(m, t, {}, c, C.PretrainConfig(lr=1e-4), 0)
    assert a != units.train_unit_id(m, t, {}, c, p, 1)
    tr, sc = C.TracesConfig(), C.ScoreConfig()
    s = units.score_unit_id("m", tr, sc)
    # how the statistics are computed (same values within float tolerance) does not make another unit
    assert s == units.score_unit_id("m", tr, C.ScoreConfig(kernel="torch", stats_backend="compiled", packing="packed",
                                                           batch_size=8, auto_batch=True))
    assert s != units.score_unit_id("m", tr, C.ScoreConfig(window=20))


@pytest.mark.parametrize("name", sorted(ENTRY))
def test_site_file_composes_with_every_entry_point(tmp_path, name):
    """conf/cluster/local.yaml (git-ignored, from the template) is loaded by every entry point."""
    import shutil

    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    conf = tmp_path / "conf"
    shutil.copytree(app.CONF_DIR, conf)
    shutil.copy(conf / "cluster" / "example_site.yaml.template", conf / "cluster" / "local.yaml")
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
        cfg = compose(config_name=name, overrides=["model.path=/tmp/m"] if name in NEEDS_PATH else [])
    job = app.to_job(cfg, ENTRY[name])
    assert job.executor.kind == "slurm" and job.tracking.uri.startswith("http")
