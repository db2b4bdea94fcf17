"""Real corpora in a campaign, through submitit's local executor: a JSON-lines corpus (two .jsonl.zst shards) and a
recipe (Parquet Shakespeare + the packaged Python stdlib) with OLMo's pretrained tokenizer. Tokenize units run
before the training units that read their shards; the realised shares reach MLflow; an added corpus leaves the
finished units of the others finished; a changed file re-tokenizes only itself; plans warn or fail on repeats."""
import os

import pytest

import launchers.app as app
from launchers.campaign import done_units, print_plan
from launchers.plan import plan_campaign
from launchers.submit import run_units
from proxy_exp import units
from proxy_exp.config import CampaignJobConfig, CorpusConfig, MixSourceConfig
from proxy_exp.tracking import keys
from tests.helpers import compose, packaged_records, runs_of, write_jsonl, write_parquet

pytestmark = [pytest.mark.integration]
OVERRIDES = ["campaign=tiny", "tokenizer=olmo", "pretrain.max_tokens=4096", "pretrain.seq_len=64",
             "pretrain.global_batch=8", "pretrain.micro_batch=8", "pretrain.checkpoint_every=0",
             "tracking.experiment=data", "tokenize.max_tasks=2", "tokenize.threads=1", "executor.max_parallel=2"]


def _corpora(data) -> dict:
    wiki = CorpusConfig(name="wiki_jsonl", source="jsonl", paths=[str(data / "wiki" / "*.jsonl.zst")])
    plays = MixSourceConfig(name="plays", source="parquet", paths=[str(data / "plays.parquet")], weight=0.6)
    code = MixSourceConfig(name="code", source="python_stdlib", max_bytes=300_000, weight=0.4)
    return {"wiki_jsonl": wiki, "recipe": CorpusConfig(name="recipe", source="mixture", mix={"plays": plays,
                                                                                               "code": code})}


def _job(root, corpora, *extra) -> CampaignJobConfig:
    job = app.to_job(compose("campaign", OVERRIDES + [f"paths.root={root}", *extra]), CampaignJobConfig)
    job.campaign.corpora = corpora
    return job


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("corpora")
    (d / "wiki").mkdir()
    recs = packaged_records("wikipedia", 400)
    write_jsonl(d / "wiki" / "part-0.jsonl.zst", recs[:200], frames=2)
    write_jsonl(d / "wiki" / "part-1.jsonl.zst", recs[200:], frames=2)
    write_parquet(d / "plays.parquet", packaged_records("shakespeare", 38, 1_000_000))
    return d


@pytest.mark.slow
def test_campaign_with_files_and_a_recipe(tmp_path, data):
    root = tmp_path / "root"
    job = _job(root, _corpora(data))
    plan = plan_campaign(job)
    toks = [u for u in plan if u.kind == "tokenize"]
    assert not [u for u in plan if u.kind == "bpe"]  # a pretrained tokenizer needs no bpe unit
    assert sorted(u.corpus for u in toks) == ["code", "plays", "wiki_jsonl", "wiki_jsonl"]  # 2 files: 2 units
    work = toks + [u for u in plan if u.kind == "train" and u.role == "proxy"]
    for u in work:
        if u.kind == "train":
            assert set(u.depends_on) == {t.id for t in toks if t.id in u.depends_on} and u.depends_on
    out = run_units(work, set(), job.executor, str(tmp_path / "submitit"))
    assert not out.failed, out.failed
    assert {u.id for u in work} <= done_units(job, plan)
    # training read the tokenize units' shards and logged the realised shares of the recipe
    (recipe_run,) = [r for r in runs_of(root, "data", "train") if r.data.tags["proxy_exp.corpus"] == "recipe"]
    m = recipe_run.data.metrics
    positions = 8 * 8  # 8 steps x 8 sequences
    for source, weight in (("plays", 0.6), ("code", 0.4)):
        assert abs(m[keys.data_key(source, "share")] - weight) <= 1.5 / positions
        assert m[keys.data_key(source, "weight")] == pytest.approx(weight)
        assert 0 < m[keys.data_key(source, "epochs")] < 1
    shards = sorted(os.listdir(root / "cache" / "tokens"))
    assert len(shards) == 4 and not [s for s in shards if s.startswith(".tmp")]

    # an added corpus: the finished units of the other corpora stay finished (ids unchanged)
    more = _corpora(data) | {"plays_only": CorpusConfig(name="plays_only", source="parquet",
                                                        paths=[str(data / "plays.parquet")])}
    plan2 = plan_campaign(_job(root, more))
    assert {u.id for u in work} <= done_units(_job(root, more), plan2)
    new = [u for u in plan2 if u.corpus == "plays_only" and u.kind == "train"]
    assert new and not {u.id for u in new} & done_units(_job(root, more), plan2)
    # with a BPE, the tokenizer is trained on every distinct source the corpora list: a corpus over a source the
    # campaign lists already (plays.parquet) changes nothing else; one over a new source changes the tokenizer, and
    # with it every unit
    bpe_ids = {u.id for u in plan_campaign(_job(root, _corpora(data), "tokenizer=bpe"))}
    assert bpe_ids < {u.id for u in plan_campaign(_job(root, more, "tokenizer=bpe"))}
    other = _corpora(data) | {"prose": CorpusConfig(name="prose", source="wikipedia", max_bytes=100_000)}
    assert not bpe_ids & {u.id for u in plan_campaign(_job(root, other, "tokenizer=bpe")) if u.kind == "train"}

    # a changed input file: its tokenize unit and the corpus's training units are pending again, nothing else
    changed = data / "wiki" / "part-1.jsonl.zst"
    write_jsonl(changed, packaged_records("wikipedia", 401)[200:], frames=2)
    plan3 = plan_campaign(job)
    done3 = done_units(job, plan3)
    pending = {(u.kind, u.corpus) for u in plan3 if u.id not in done3 and u.role in ("data", "proxy")
               and u.kind in ("tokenize", "train")}
    assert pending == {("tokenize", "wiki_jsonl"), ("train", "wiki_jsonl")}, pending
    retok = [u for u in plan3 if u.kind == "tokenize" and u.id not in done3]
    assert len(retok) == 1 and retok[0].config.files == [str(changed)]
    stamps = {s: os.stat(root / "cache" / "tokens" / s / "tokens.ds").st_mtime_ns for s in shards}
    r = units.read_done(str(root), retok[0].id)
    assert r is None
    from proxy_exp.data.job import tokenize

    res = tokenize(retok[0].config, progress=False)
    assert len(res.shards) == 1 and os.path.basename(res.shards[0]) not in shards
    assert {s: os.stat(root / "cache" / "tokens" / s / "tokens.ds").st_mtime_ns for s in shards} == stamps


def test_plan_shows_shares_and_fails_on_repeats_by_config(tmp_path, data, capsys):
    corpora = _corpora(data)
    corpora["recipe"].mix["code"].max_bytes = 2_000
    corpora["recipe"].mix["code"].max_epochs = 1.0
    job = _job(tmp_path, corpora)
    plan = plan_campaign(job)
    print_plan(job, plan)  # warns
    out = capsys.readouterr()
    assert "recipe" in out.out and "OVER CAP" in out.out and "est." in out.out
    assert "warning: corpus 'recipe'" in out.err and "'code'" in out.err
    corpora["recipe"].repeat_policy = "fail"
    job = _job(tmp_path, corpora)
    with pytest.raises(ValueError, match="repeat_policy=fail"):
        print_plan(job, plan_campaign(job))
