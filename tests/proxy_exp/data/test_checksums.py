"""Content checksums of input files: tokenization records each file's sha256 with the identity its shards are keyed
by; a file touched, copied or moved with its bytes unchanged keeps that identity, so nothing is re-tokenized or
retrained, while a file whose bytes changed is a new input."""
from __future__ import annotations

import json
import os
import shutil

from launchers.app import to_job
from launchers.plan import plan_campaign
from proxy_exp.config import CampaignJobConfig, CorpusConfig, MixSourceConfig
from tests.helpers import compose


def _write_source(folder, n_files: int, seed: int) -> None:
    os.makedirs(folder, exist_ok=True)
    for i in range(n_files):
        words = " ".join(f"w{(seed * 7 + i * 13 + j) % 97}" for j in range(600))
        with open(os.path.join(folder, f"part-{i}.jsonl"), "w") as f:
            for d in range(3):
                f.write(json.dumps({"text": f"doc {d} {words}"}) + "\n")


def _job(root, src_a, src_b, tokenizer: str) -> CampaignJobConfig:
    job = to_job(compose("campaign", [f"paths.root={root}", f"tokenizer={tokenizer}", "campaign=mini",
                                      "tokenizer.vocab_size=300", "tokenizer.sample_bytes_per_corpus=20000"]),
                 CampaignJobConfig)
    job.campaign.corpora = {
        f"r{k}": CorpusConfig(name=f"r{k}", source="mixture", mix={
            "a": MixSourceConfig(name="a", source="jsonl", paths=[str(src_a)], weight=1 + k),
            "b": MixSourceConfig(name="b", source="jsonl", paths=[str(src_b)], weight=2 - k)})
        for k in range(2)}
    return job


def _ids(job) -> dict[str, str]:
    """Every unit's id by its place in the plan (tokenize units by their order, not their files' paths)."""
    return {f"{u.kind} {u.role} {u.corpus} {u.size} {u.seed} {i}": u.id for i, u in enumerate(plan_campaign(job))}


def _run_data_units(job) -> None:
    from proxy_exp.data.job import tokenize, train_tokenizer

    for u in plan_campaign(job):
        if u.kind == "bpe":
            train_tokenizer(u.config, progress=False)
        elif u.kind == "tokenize":
            tokenize(u.config, progress=False)


def _train_ids(ids: dict[str, str]) -> set[str]:
    return {v for k, v in ids.items() if k.startswith("train")}


def _tokenized(tmp_path, tokenizer: str):
    """Two sources of JSON-lines files and two recipes over them, tokenized: (source folders, root, ids before)."""
    src_a, src_b = tmp_path / "data" / "a", tmp_path / "data" / "b"
    _write_source(src_a, 3, 1)
    _write_source(src_b, 2, 2)
    root = tmp_path / "root"
    job = _job(root, src_a, src_b, tokenizer)
    before = _ids(job)
    _run_data_units(job)
    return src_a, src_b, root, job, before


def test_touched_moved_and_copied_files_retrain_nothing(tmp_path):
    from proxy_exp.data.mixture import open_train_data
    from proxy_exp.data.tokenizer import build_tokenizer

    src_a, src_b, root, job, before = _tokenized(tmp_path, "olmo")
    assert _ids(job) == before  # recording checksums renames nothing
    index = os.listdir(root / "cache" / "inputs")
    assert index and all(n.endswith(".json") for n in index)

    # touched: a new mtime, the same bytes
    os.utime(src_a / "part-1.jsonl", ns=(1_000_000_000, 1_000_000_000))
    assert _ids(job) == before
    # moved: the whole folder somewhere else, and the config's paths with it
    moved = tmp_path / "elsewhere" / "a"
    shutil.copytree(src_a, moved)  # a copy: new inode, new mtimes
    shutil.rmtree(src_a)
    moved_job = _job(root, moved, src_b, "olmo")
    assert _ids(moved_job) == before
    # and the moved files read the shards they had: nothing is missing, nothing is tokenized again
    tok, tok_dir = build_tokenizer(moved_job.tokenizer, {}, str(root / "cache"))
    recipe = moved_job.campaign.corpora["r0"]
    data = open_train_data(recipe, tok, tok_dir, 64, str(root / "cache"), 0, 4, 3, progress=False,
                           tokenize_missing=False)
    assert data.rows(0).shape == (4, 64)

    # a file whose bytes changed is a new input: its group re-tokenizes and the recipes reading its source retrain
    with open(moved / "part-2.jsonl", "a") as f:
        f.write(json.dumps({"text": "a new document"}) + "\n")
    changed = _ids(moved_job)
    assert _train_ids(changed).isdisjoint(_train_ids(before))


def test_the_bpe_sample_survives_a_moved_source(tmp_path):
    src_a, src_b, root, _, before = _tokenized(tmp_path, "bpe")
    moved = tmp_path / "moved" / "b"
    shutil.copytree(src_b, moved)
    shutil.rmtree(src_b)
    assert _ids(_job(root, src_a, moved, "bpe")) == before
