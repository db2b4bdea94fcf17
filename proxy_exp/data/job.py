"""The data units of a campaign: ``bpe`` (train the shared BPE on a bounded, balanced sample of the campaign's
sources) and ``tokenize`` (one group of a source's input files -> one token shard per file). On Slurm the tokenize
units of a campaign go out as one job array (one task per unit) and training waits for them (``afterok``); each
task encodes with ``tokenize.threads`` tokenizer threads. A unit is done when its completion marker exists; its
shards are complete folders whatever happens (temporary names, renamed when complete), so a failed or cancelled
task loses only its unfinished file.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

from proxy_exp import units
from proxy_exp.config import BpeJobConfig, TokenizeJobConfig, resolve_root


@dataclass
class TokenizeResult:
    unit_id: str
    source: str
    shards: list[str] = field(default_factory=list)
    inputs: list[str] = field(default_factory=list)
    documents: int = 0
    tokens: int = 0
    bytes: int = 0
    seconds: float = 0.0
    mb_per_s: float = 0.0
    tokenizer_dir: str = ""


@dataclass
class BpeResult:
    unit_id: str
    tokenizer_dir: str
    vocab_size: int
    seconds: float


def tokenize(cfg: TokenizeJobConfig, progress: bool = True) -> TokenizeResult:
    """Tokenize this unit's input files (a packaged source: the source) into token shards; reuse the ones that exist."""
    from proxy_exp.data.readers import is_file_source
    from proxy_exp.data.shards import source_inputs, source_shard_dirs, tokenize_inputs
    from proxy_exp.data.tokenizer import build_tokenizer

    t0 = time.time()
    root = resolve_root(cfg.paths)
    with units.input_memo(os.path.join(root, "cache")):
        unit_id = cfg.unit_id or units.tokenize_unit_id(cfg.tokenizer, cfg.tokenizer_corpora, cfg.source,
                                                        list(cfg.files))
    done = units.read_done(root, unit_id)
    if done is not None:
        return TokenizeResult(**done)
    if is_file_source(cfg.source) and not cfg.files:
        raise ValueError(f"tokenize unit {unit_id}: no input files for file source {cfg.source.name!r}")
    cache = os.path.join(root, "cache")
    tok_corpora = dict(cfg.tokenizer_corpora) or {cfg.source.name: cfg.source}
    tokenizer, tok_dir = build_tokenizer(cfg.tokenizer, tok_corpora, cache, progress=progress)
    inputs = source_inputs(cfg.source, list(cfg.files) if is_file_source(cfg.source) else None, cache)
    metas = tokenize_inputs(cfg.source, inputs, tokenizer, tok_dir, cache, cfg.tokenize, progress=progress)
    seconds = time.time() - t0
    work = sum(m["seconds"] for m in metas) or 1e-9
    result = TokenizeResult(unit_id=unit_id, source=cfg.source.name,
                            shards=[p for _, p in source_shard_dirs(cfg.source, tokenizer, tok_dir, cache, inputs=inputs)],
                            inputs=[i.label for i in inputs], documents=sum(m["documents"] for m in metas),
                            tokens=sum(m["tokens"] for m in metas), bytes=sum(m["bytes"] for m in metas),
                            seconds=round(seconds, 3), mb_per_s=round(sum(m["bytes"] for m in metas) / 1e6 / work, 3),
                            tokenizer_dir=tok_dir)
    units.write_done(root, unit_id, result)
    return result


def train_tokenizer(cfg: BpeJobConfig, progress: bool = True) -> BpeResult:
    """Train (or find) the campaign's shared BPE; its folder is keyed by the sources' manifests, so every later job
    finds it without reading text."""
    from proxy_exp.data.tokenizer import build_tokenizer

    t0 = time.time()
    root = resolve_root(cfg.paths)
    unit_id = cfg.unit_id or units.bpe_unit_id(cfg.tokenizer, cfg.corpora)
    done = units.read_done(root, unit_id)
    if done is not None:
        return BpeResult(**done)
    tokenizer, tok_dir = build_tokenizer(cfg.tokenizer, dict(cfg.corpora), os.path.join(root, "cache"),
                                         progress=progress)
    result = BpeResult(unit_id=unit_id, tokenizer_dir=tok_dir, vocab_size=len(tokenizer),
                       seconds=round(time.time() - t0, 3))
    units.write_done(root, unit_id, result)
    return result
