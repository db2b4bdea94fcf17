"""Every entry point's config and every group option composes; bad keys and types fail with their name."""
import os

import pytest
from hydra.errors import ConfigCompositionException
from omegaconf.errors import ConfigKeyError

import launchers.app as app
from tests.helpers import run_cli
from proxy_exp import config as C

ENTRY = {"train": C.TrainJobConfig, "score": C.ScoreJobConfig, "evaluate": C.EvaluateJobConfig,
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
    cfg = compose_cfg(entry, overrides)
    job = app.to_job(cfg, ENTRY[entry])
    assert isinstance(job, ENTRY[entry])
    assert job == _merged(cfg, ENTRY[entry])  # to_job's fast path builds what the full re-validation builds


def _merged(cfg, cls):
    """The job as a full merge into the schema builds it (to_job's path for a config that needs it)."""
    from omegaconf import OmegaConf

    return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(cls), OmegaConf.to_container(cfg, resolve=True)))


def test_campaign_groups_fill_typed_dicts(compose_cfg):
    job = app.to_job(compose_cfg("campaign", ["campaign=mini"]), C.CampaignJobConfig)
    assert set(job.campaign.corpora) == {"python_code", "shakespeare", "wikipedia", "llm_math"}
    assert all(isinstance(c, C.CorpusConfig) for c in job.campaign.corpora.values())
    assert isinstance(job.campaign.sizes["s"], C.ModelConfig) and job.campaign.sizes["s"].d_model == 64
    recipes = app.to_job(compose_cfg("campaign"), C.CampaignJobConfig).campaign  # the default: recipes of sources
    assert all(isinstance(m, C.MixSourceConfig) for r in recipes.corpora.values() for m in r.mix.values())
    assert recipes.corpora["wiki20"].mix["wiki"].source == "wikipedia" and recipes.corpora["wiki20"].mix["wiki"].weight == 0.2


def test_unknown_key_fails_with_its_name(compose_cfg):
    with pytest.raises(ConfigCompositionException, match="lrr"):
        compose_cfg("train", ["lrr=1"])
    with pytest.raises(ConfigCompositionException, match="n_lyr"):
        compose_cfg("train", ["model.n_lyr=3"])


def test_appended_key_is_caught_by_revalidation(compose_cfg):
    cfg = compose_cfg("train", ["+pretrain.lrr=1"])  # Hydra lets `+key` through ...
    with pytest.raises(ConfigKeyError, match="lrr"):  # ... the schema re-validation does not
        app.to_job(cfg, C.TrainJobConfig)


def test_appended_key_deep_in_typed_dicts_and_lists_is_caught(compose_cfg):
    for added, name in (("+campaign.corpora.wiki20.mix.wiki.wieght=1", "wieght"),
                        ("+campaign.sizes.xs.n_lyr=2", "n_lyr"), ("+campaign.bogus=1", "bogus")):
        cfg = compose_cfg("campaign", [added])
        assert [k.rsplit(".", 1)[-1] for k in app.unknown_keys(
            app.OmegaConf.to_container(cfg, resolve=True), C.CampaignJobConfig)] == [name]
        with pytest.raises(ConfigKeyError, match=name):
            app.to_job(cfg, C.CampaignJobConfig)


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
    r = run_cli("proxy-train", "+pretrain.lrr=1", f"paths.root={tmp_path}", ok=False, timeout=120)
    assert r.returncode != 0
    assert "lrr" in r.stderr and "Traceback" not in r.stderr


def test_cli_dry_runs_print_plan(tmp_path, compose_cfg):
    import json

    from launchers.plan import plan_campaign
    from proxy_exp.train.plan import plan_training

    r = run_cli("proxy-campaign", "action=plan", f"paths.root={tmp_path}", timeout=180)
    job = app.to_job(compose_cfg("campaign", [f"paths.root={tmp_path}"]), C.CampaignJobConfig)
    trains = [u for u in plan_campaign(job) if u.kind == "train"]
    assert "61 units (1 bpe, 4 tokenize, 24 train, 8 score, 24 evaluate), 0 already done" in r.stdout
    for u in trains:  # one table row per training unit, with the unit's own step count
        row = next(line for line in r.stdout.splitlines() if u.id in line)
        assert str(plan_training(u.config, job.tokenizer.vocab_size).steps) in row.split()
    total = sum(plan_training(u.config, job.tokenizer.vocab_size).flops for u in trains)
    assert f"total training FLOPs: {total:.3g}" in r.stdout
    r = run_cli("proxy-train", "dry_run=true", f"paths.root={tmp_path}", timeout=120)
    printed = json.loads(r.stdout[r.stdout.index("{"):])
    tjob = app.to_job(compose_cfg("train", [f"paths.root={tmp_path}"]), C.TrainJobConfig)
    expected = plan_training(tjob, tjob.tokenizer.vocab_size)
    assert (printed["steps"], printed["tokens"], printed["flops"]) == (expected.steps, expected.tokens, expected.flops)
    assert not os.path.exists(tmp_path / "units")  # a dry run does nothing


def test_cfg_job_prints_config():
    r = run_cli("proxy-score", "--cfg", "job", "model.path=/tmp/m", timeout=120)
    assert "window: 1000" in r.stdout and "kernel: auto" in r.stdout


def test_unit_ids_stable_and_sensitive():
    from proxy_exp import units
    m, t, c, p = C.ModelConfig(), C.TokenizerConfig(), C.CorpusConfig(), C.PretrainConfig()
    a = units.train_unit_id(m, t, {}, c, p, 0)
    assert a == units.train_unit_id(C.ModelConfig(), t, {}, c, C.PretrainConfig(keep_checkpoints=99), 0)  # operational only
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
    assert job.executor.target.score.gpus_per_node == 8 and job.executor.score.gpus_per_node == 1  # per role
    assert job.executor.data.cpus_per_task == 8 and job.executor.data.gpus_per_node == 0


# --------------------------------------------------------------------------- enumerated settings
def _enum_settings():
    """(entry point, dotted key, enum type) of every enumerated setting an entry point composes."""
    import dataclasses
    import enum
    import typing

    out = []

    def walk(cls, prefix, entry, seen):
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            t = hints[f.name]
            if isinstance(t, type) and issubclass(t, enum.Enum):
                out.append((entry, prefix + f.name, t))
            elif isinstance(t, type) and dataclasses.is_dataclass(t) and (prefix + f.name) not in seen:
                walk(t, prefix + f.name + ".", entry, seen | {prefix + f.name})

    for entry, cls in ENTRY.items():
        walk(cls, "", entry, set())
    return out


ENUM_SETTINGS = _enum_settings()


def test_every_choice_setting_is_an_enum():
    """The settings that take one of a few values are enums (checked at compose time), not plain strings."""
    assert all(getattr(C, name).__name__ == name for name in C._CHOICES)  # unpacked in _CHOICES order
    keys = {key for _, key, _ in ENUM_SETTINGS}
    assert {"model.arch", "model.dtype", "model.device", "model.device_map", "tokenizer.kind", "corpus.source",
            "corpus.hf_builder", "corpus.repeat_policy", "traces.source", "pretrain.precision",
            "pretrain.budget_params", "pretrain.preempt_signal", "score.kernel", "score.stats_backend",
            "score.packing", "score.freq_source", "executor.kind", "analysis.kind",
            "analysis.primary_proxy", "analysis.ce_proxy", "action"} <= keys


@pytest.mark.parametrize("entry,key,enum_type", ENUM_SETTINGS, ids=[f"{e}:{k}" for e, k, _ in ENUM_SETTINGS])
def test_misspelt_enumerated_value_fails_at_compose_time(compose_cfg, entry, key, enum_type):
    """A typo in an enumerated setting fails when the config is composed, naming the key and the allowed values."""
    extra = ["model.path=/tmp/m"] if entry in NEEDS_PATH else []
    with pytest.raises(ConfigCompositionException) as e:
        compose_cfg(entry, extra + [f"{key}=trition"])
    message = str(e.value.__cause__ or e.value)
    assert "trition" in message and key.split(".")[-1] in message
    assert all(member.name in message for member in list(enum_type)[:3])
    # every allowed value composes and reaches the job as that member (of the 80 proxy names: the first and last two)
    members = list(enum_type)
    for member in members if len(members) <= 8 else members[:2] + members[-2:]:
        job = app.to_job(compose_cfg(entry, extra + [f"{key}={member.name}"]), ENTRY[entry])
        value = job
        for part in key.split("."):
            value = getattr(value, part)
        assert value is member and value == member.value  # none: the empty value, falsy like an unset string

