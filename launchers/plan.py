"""Plan: a campaign config expanded into units of work with stable ids and dependencies.

Data units come first: a ``bpe`` unit when the campaign trains its own tokenizer, then ``tokenize`` units (each
source of each corpus or recipe, its input files split into at most ``tokenize.max_tasks`` groups; a source that
several recipes share is tokenized once). Each training unit depends on the tokenize units of its corpus; score and
evaluate units on their training unit. Planning stats input files (size, mtime) and reads none of them."""
from __future__ import annotations

import copy
import dataclasses
import json
import os

from omegaconf import OmegaConf

from proxy_exp import units
from proxy_exp.config import (Arch, BpeJobConfig, CampaignJobConfig, EvaluateJobConfig, InLoopConfig, PretrainConfig,
                              ScoreJobConfig, TokenizeJobConfig, TokenizerKind, TrainJobConfig, resolve_root)
from proxy_exp.data.readers import file_stat
from proxy_exp.units import Unit


def _pretrain_for(cfg: CampaignJobConfig, role: str) -> PretrainConfig:
    if role != "target" or not cfg.campaign.target_pretrain:
        return copy.deepcopy(cfg.pretrain)
    merged = OmegaConf.merge(OmegaConf.structured(cfg.pretrain), dict(cfg.campaign.target_pretrain))
    return OmegaConf.to_object(merged)  # type: ignore[return-value]


def split_files(files: list[str], groups: int) -> list[list[str]]:
    """``files`` (in order) as at most ``groups`` contiguous groups of about equal total size."""
    if not files:
        return []
    n = max(1, min(groups, len(files)))
    sizes = [max(1, file_stat(f).st_size) for f in files]
    total, out, cur, acc = sum(sizes), [], [], 0
    for f, size in zip(files, sizes):
        cur.append(f)
        acc += size
        left_files, left_groups = len(files) - sum(map(len, out)) - len(cur), n - len(out) - 1
        if left_groups > 0 and (acc >= total * (len(out) + 1) / n or left_files == left_groups):
            out.append(cur)
            cur = []
    if cur:
        out.append(cur)
    return out


def tokenizer_sample(cfg: CampaignJobConfig) -> dict:
    """The BPE's sample (the distinct sources the campaign's corpora list; {} for a pretrained tokenizer): made once
    per plan and shared by every unit, whose ids it enters (a copy per unit made planning grow with the square of
    the recipes)."""
    from proxy_exp.data.tokenizer import sample_sources

    return sample_sources(dict(cfg.campaign.corpora)) if cfg.tokenizer.kind == TokenizerKind.bpe else {}


def data_units(cfg: CampaignJobConfig) -> tuple[list[Unit], dict[str, list[str]]]:
    """The campaign's bpe unit (if it trains a BPE) and tokenize units, and the tokenize unit ids each corpus
    needs (corpus name -> ids)."""
    from proxy_exp.data.corpora import corpus_sources, shard_reader_key
    from proxy_exp.data.readers import input_files, is_file_source, source_spec_key

    c = cfg.campaign
    tok_corpora = tokenizer_sample(cfg)
    out: list[Unit] = []
    deps: list[str] = []
    if tok_corpora:
        bid = units.bpe_unit_id(cfg.tokenizer, tok_corpora)
        bcfg = BpeJobConfig(tokenizer=copy.deepcopy(cfg.tokenizer), corpora=tok_corpora, tracking=cfg.tracking,
                            paths=cfg.paths, unit_id=bid, campaign=c.name)
        out.append(Unit(bid, "bpe", "data", "all", "-", 0, bcfg))
        deps = [bid]
    needs: dict[str, list[str]] = {}
    seen: set[str] = set()
    by_source: dict[str, list[str]] = {}  # a source that several recipes share is split and identified once
    for corpus_name, corpus in c.corpora.items():
        needs[corpus_name] = []
        srcs = corpus_sources(corpus)
        for sname, src in srcs.items():
            file_source = is_file_source(src)
            key = json.dumps([source_spec_key(src) if file_source else "", shard_reader_key(src)], default=str)
            if key in by_source:
                needs[corpus_name] += by_source[key]
                continue
            files = input_files(src) if file_source else []
            groups = split_files(files, max(1, cfg.tokenize.max_tasks)) or [[]]
            label = corpus_name if str(corpus.source) != "mixture" else sname
            by_source[key] = []
            for i, group in enumerate(groups):
                tid = units.tokenize_unit_id(cfg.tokenizer, tok_corpora, src, group)
                needs[corpus_name].append(tid)
                by_source[key].append(tid)
                if tid in seen:
                    continue
                seen.add(tid)
                source = copy.deepcopy(src)
                source.name = label
                tcfg = TokenizeJobConfig(tokenizer=copy.deepcopy(cfg.tokenizer), tokenizer_corpora=tok_corpora,
                                         source=source, files=group, tokenize=copy.deepcopy(cfg.tokenize),
                                         tracking=cfg.tracking, paths=cfg.paths, unit_id=tid, campaign=c.name)
                out.append(Unit(tid, "tokenize", "data", label, f"{i + 1}/{len(groups)}", 0, tcfg, list(deps)))
    return out, needs


def plan_campaign(cfg: CampaignJobConfig) -> list[Unit]:
    """Every unit of the campaign, dependencies before dependants (each file source's inputs stat-ed once)."""
    with units.input_memo(os.path.join(resolve_root(cfg.paths), "cache")):
        return _plan_campaign(cfg)


def _plan_campaign(cfg: CampaignJobConfig) -> list[Unit]:
    c = cfg.campaign
    if not c.corpora:
        raise ValueError("campaign.corpora is empty: list corpora in the campaign config (see conf/campaign/mini.yaml)")
    if len(c.corpora) < 2:
        raise ValueError("campaign.corpora needs at least 2 corpora to rank")
    for s in [*c.proxy_sizes, c.target_size]:
        if s not in c.sizes:
            raise ValueError(f"campaign size {s!r} is not defined in campaign.sizes (have: {sorted(c.sizes)})")
    root = resolve_root(cfg.paths)
    plan, needs = data_units(cfg)
    tok_corpora = tokenizer_sample(cfg)
    roles = [("proxy", size, c.seeds) for size in c.proxy_sizes] + [("target", c.target_size, c.target_seeds)]
    pretrain = {role: _pretrain_for(cfg, role) for role in ("proxy", "target")}  # one OmegaConf merge, not one a unit
    corpus_ids = {name: units.corpus_identity(corpus) for name, corpus in c.corpora.items()}  # once per corpus
    for role, size, seeds in roles:
        for corpus_name, corpus in c.corpora.items():
            identity = None  # what determines the result but the seed: made once for all seeds
            for seed in seeds:
                tcfg = TrainJobConfig(model=copy.deepcopy(c.sizes[size]), tokenizer=copy.deepcopy(cfg.tokenizer),
                                      corpus=copy.deepcopy(corpus),
                                      tokenizer_corpora=tok_corpora,
                                      pretrain=copy.deepcopy(pretrain[role]), seed=seed, tracking=cfg.tracking,
                                      paths=cfg.paths, campaign=c.name, tokenize=copy.deepcopy(cfg.tokenize))
                tcfg.model.name = size
                if identity is None:
                    identity = units.train_identity(tcfg.model, tcfg.tokenizer, tcfg.tokenizer_corpora, tcfg.corpus,
                                                    tcfg.pretrain, corpus_ids[corpus_name])
                tid = units.train_unit_id_of(identity, seed)
                tcfg.unit_id = tid
                tcfg.tags = {"role": role, "name": f"train {corpus_name} {size} s{seed}"}
                if role == "proxy" and c.in_loop_score_every > 0:
                    tcfg.in_loop = InLoopConfig(score_every=c.in_loop_score_every, traces=copy.deepcopy(cfg.traces),
                                                score=copy.deepcopy(cfg.score))
                plan.append(Unit(tid, "train", role, corpus_name, size, seed, tcfg, list(dict.fromkeys(needs[corpus_name]))))
                model_cfg = dataclasses.replace(tcfg.model, arch=Arch.pretrained,
                                                path=os.path.join(units.unit_dir(root, tid), "model"))
                tags = {"corpus": corpus_name, "size": size, "role": role, "seed": str(seed), "train_unit": tid}
                # an explicit campaign.sizes.<size>.dtype names its score and evaluate results (auto adds nothing, so
                # existing ids stay); auto resolves on the node that runs the unit, which the plan cannot know
                extra = {"dtype": str(model_cfg.dtype)} if str(model_cfg.dtype) != "auto" else None
                if role == "proxy" or c.score_targets:
                    sid = units.score_unit_id(tid, cfg.traces, cfg.score, extra)
                    scfg = ScoreJobConfig(model=model_cfg, traces=cfg.traces, score=cfg.score, tracking=cfg.tracking,
                                          paths=cfg.paths, unit_id=sid, campaign=c.name,
                                          tags=tags | {"name": f"score {corpus_name} {size} s{seed}"})
                    plan.append(Unit(sid, "score", role, corpus_name, size, seed, scfg, [tid]))
                if role == "target" or c.evaluate_proxies:
                    eid = units.eval_unit_id(tid, cfg.evaluate, extra)
                    ecfg = EvaluateJobConfig(model=model_cfg, evaluate=cfg.evaluate, tracking=cfg.tracking,
                                         paths=cfg.paths, unit_id=eid, campaign=c.name,
                                         tags=tags | {"name": f"evaluate {corpus_name} {size} s{seed}"})
                    plan.append(Unit(eid, "evaluate", role, corpus_name, size, seed, ecfg, [tid]))
    return plan
