"""Plan: a campaign config expanded into units of work with stable ids and dependencies."""
from __future__ import annotations

import copy
import dataclasses
import os

from omegaconf import OmegaConf

from proxy_exp import units
from proxy_exp.config import (Arch, CampaignJobConfig, EvaluateJobConfig, InLoopConfig, PretrainConfig,
                              ScoreJobConfig, TrainJobConfig, resolve_root)
from proxy_exp.units import Unit


def _pretrain_for(cfg: CampaignJobConfig, role: str) -> PretrainConfig:
    if role != "target" or not cfg.campaign.target_pretrain:
        return copy.deepcopy(cfg.pretrain)
    merged = OmegaConf.merge(OmegaConf.structured(cfg.pretrain), dict(cfg.campaign.target_pretrain))
    return OmegaConf.to_object(merged)  # type: ignore[return-value]


def plan_campaign(cfg: CampaignJobConfig) -> list[Unit]:
    """Every unit of the campaign, dependencies before dependants."""
    c = cfg.campaign
    if not c.corpora:
        raise ValueError("campaign.corpora is empty: list corpora in the campaign config (see conf/campaign/mini.yaml)")
    if len(c.corpora) < 2:
        raise ValueError("campaign.corpora needs at least 2 corpora to rank")
    for s in [*c.proxy_sizes, c.target_size]:
        if s not in c.sizes:
            raise ValueError(f"campaign size {s!r} is not defined in campaign.sizes (have: {sorted(c.sizes)})")
    root = resolve_root(cfg.paths)
    plan: list[Unit] = []
    roles = [("proxy", size, c.seeds) for size in c.proxy_sizes] + [("target", c.target_size, c.target_seeds)]
    for role, size, seeds in roles:
        for corpus_name, corpus in c.corpora.items():
            for seed in seeds:
                tcfg = TrainJobConfig(model=copy.deepcopy(c.sizes[size]), tokenizer=copy.deepcopy(cfg.tokenizer),
                                      corpus=copy.deepcopy(corpus), tokenizer_corpora=copy.deepcopy(dict(c.corpora)),
                                      pretrain=_pretrain_for(cfg, role), seed=seed, tracking=cfg.tracking,
                                      paths=cfg.paths, campaign=c.name)
                tcfg.model.name = size
                tid = units.train_unit_id(tcfg.model, tcfg.tokenizer, tcfg.tokenizer_corpora, tcfg.corpus,
                                          tcfg.pretrain, seed)
                tcfg.unit_id = tid
                tcfg.tags = {"role": role, "name": f"train {corpus_name} {size} s{seed}"}
                if role == "proxy" and c.in_loop_score_every > 0:
                    tcfg.in_loop = InLoopConfig(score_every=c.in_loop_score_every, traces=copy.deepcopy(cfg.traces),
                                                score=copy.deepcopy(cfg.score))
                plan.append(Unit(tid, "train", role, corpus_name, size, seed, tcfg))
                model_cfg = dataclasses.replace(tcfg.model, arch=Arch.pretrained,
                                                path=os.path.join(units.unit_dir(root, tid), "model"))
                tags = {"corpus": corpus_name, "size": size, "role": role, "seed": str(seed), "train_unit": tid}
                if role == "proxy" or c.score_targets:
                    sid = units.score_unit_id(tid, cfg.traces, cfg.score)
                    scfg = ScoreJobConfig(model=model_cfg, traces=cfg.traces, score=cfg.score, tracking=cfg.tracking,
                                          paths=cfg.paths, unit_id=sid, campaign=c.name,
                                          tags=tags | {"name": f"score {corpus_name} {size} s{seed}"})
                    plan.append(Unit(sid, "score", role, corpus_name, size, seed, scfg, [tid]))
                if role == "target" or c.evaluate_proxies:
                    eid = units.eval_unit_id(tid, cfg.evaluate)
                    ecfg = EvaluateJobConfig(model=model_cfg, evaluate=cfg.evaluate, tracking=cfg.tracking,
                                         paths=cfg.paths, unit_id=eid, campaign=c.name,
                                         tags=tags | {"name": f"evaluate {corpus_name} {size} s{seed}"})
                    plan.append(Unit(eid, "evaluate", role, corpus_name, size, seed, ecfg, [tid]))
    return plan
