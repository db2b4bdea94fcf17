"""The one tokenizer every model of a campaign shares.

``kind="bpe"`` trains a byte-level BPE (the `tokenizers` library) on a balanced sample, the first
``sample_bytes_per_corpus`` bytes of each corpus, and caches it under
``<cache_dir>/tokenizers/<hash>`` where the hash covers the sample text and the config; a second call
with the same inputs loads the cached folder instead of training. ``"<|endoftext|>"`` is bos, eos and
unk; ``"<pad>"`` is pad. ``kind="pretrained"`` loads ``cfg.path`` (a tokenizer folder, or a
``tokenizer.json`` file which is then saved as a folder in the cache).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import time
import uuid

from transformers import AutoTokenizer, PreTrainedTokenizerFast

from proxy_exp.config import CorpusConfig, TokenizerConfig, TokenizerKind
from proxy_exp.data.corpora import read_documents

EOS_TOKEN = "<|endoftext|>"
PAD_TOKEN = "<pad>"
SPECIAL_TOKENS: tuple[str, ...] = (EOS_TOKEN, PAD_TOKEN)
BPE_RECIPE_VERSION = 1  # bump when the training recipe below changes: old caches are then not reused
MIN_BPE_VOCAB = 256 + len(SPECIAL_TOKENS)  # the byte alphabet plus the special tokens


def tokenizer_fingerprint(tok_dir: str) -> str:
    """sha256 (16 hex digits) of ``tok_dir/tokenizer.json`` (or, if absent, of its tokenizer files)."""
    main = os.path.join(tok_dir, "tokenizer.json")
    if os.path.isfile(main):
        files = [main]
    else:
        prefixes = ("tokenizer", "vocab", "merges", "special_tokens_map", "added_tokens")
        files = sorted(os.path.join(tok_dir, n) for n in os.listdir(tok_dir)
                       if n.startswith(prefixes) or n.endswith(".model"))
        if not files:
            raise FileNotFoundError(f"no tokenizer files (tokenizer.json, vocab*, *.model) in {tok_dir!r}")
    h = hashlib.sha256()
    for path in files:
        h.update(os.path.basename(path).encode())
        with open(path, "rb") as f:
            h.update(f.read())
    return h.hexdigest()[:16]


def _wrap(tok) -> PreTrainedTokenizerFast:
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=EOS_TOKEN, eos_token=EOS_TOKEN,
                                   unk_token=EOS_TOKEN, pad_token=PAD_TOKEN, clean_up_tokenization_spaces=False)


def train_bpe(documents: list[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE with the project's special tokens on ``documents`` (no caching)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    if vocab_size < MIN_BPE_VOCAB:
        raise ValueError(f"tokenizer.vocab_size must be >= {MIN_BPE_VOCAB} (256 bytes + {len(SPECIAL_TOKENS)} "
                         f"special tokens), got {vocab_size}")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(documents, trainer=trainer, length=len(documents))
    return _wrap(tok)


def _load(tok_dir: str) -> PreTrainedTokenizerFast:
    return AutoTokenizer.from_pretrained(tok_dir)


def _publish(tmp: str, final: str) -> None:
    """Rename a completed tmp folder into place; if another process won the race, keep theirs."""
    try:
        os.rename(tmp, final)
    except OSError:
        if not os.path.isdir(final):
            raise
        shutil.rmtree(tmp, ignore_errors=True)


def _tmp_dir(final: str) -> str:
    return os.path.join(os.path.dirname(final), f".tmp-{os.path.basename(final)}-{os.getpid()}-{uuid.uuid4().hex[:8]}")


def _balanced_sample(cfg: TokenizerConfig, corpora: dict[str, CorpusConfig]) -> tuple[list[str], dict]:
    """The first ``sample_bytes_per_corpus`` bytes of each corpus (by name), and a record of them."""
    docs: list[str] = []
    record: dict[str, dict] = {}
    for name in sorted(corpora):
        corpus = corpora[name]
        limit = cfg.sample_bytes_per_corpus
        if corpus.max_bytes > 0:
            limit = min(limit, corpus.max_bytes) if limit > 0 else corpus.max_bytes
        h = hashlib.sha256()
        n_bytes = n_docs = 0
        for doc in read_documents(dataclasses.replace(corpus, max_bytes=limit)):
            data = doc.encode("utf-8")
            h.update(len(data).to_bytes(8, "little"))
            h.update(data)
            n_bytes += len(data)
            n_docs += 1
            docs.append(doc)
        if n_docs == 0:
            raise ValueError(f"corpus {name!r} (source {corpus.source!r}) gave no text for the tokenizer sample")
        record[name] = {"source": corpus.source, "bytes": n_bytes, "documents": n_docs, "sha256": h.hexdigest()}
    return docs, record


def build_tokenizer(cfg: TokenizerConfig, corpora: dict[str, CorpusConfig],
                    cache_dir: str) -> tuple[PreTrainedTokenizerFast, str]:
    """The shared tokenizer and the folder it is saved in (``save_pretrained`` layout).

    kind="bpe": train (or load from ``<cache_dir>/tokenizers/<hash>``) a byte-level BPE on the first
    ``cfg.sample_bytes_per_corpus`` bytes of each corpus in ``corpora``. kind="pretrained": load ``cfg.path``.
    """
    if cfg.kind == TokenizerKind.pretrained:
        return _pretrained(cfg, cache_dir)
    if cfg.kind != TokenizerKind.bpe:
        raise ValueError(f"unknown tokenizer.kind {cfg.kind!r}; valid kinds: bpe, pretrained")
    if not corpora:
        raise ValueError("a bpe tokenizer needs at least one corpus to train on (tokenizer_corpora is empty)")
    if cfg.sample_bytes_per_corpus < 0:
        raise ValueError(f"tokenizer.sample_bytes_per_corpus must be >= 0, got {cfg.sample_bytes_per_corpus}")
    import tokenizers

    docs, record = _balanced_sample(cfg, corpora)
    settings = {"kind": cfg.kind, "vocab_size": cfg.vocab_size, "sample_bytes_per_corpus": cfg.sample_bytes_per_corpus,
                "special_tokens": list(SPECIAL_TOKENS), "recipe": BPE_RECIPE_VERSION,
                "tokenizers": tokenizers.__version__}
    key = json.dumps({"settings": settings, "sample": [record[n]["sha256"] for n in sorted(record)]}, sort_keys=True)
    final = os.path.join(cache_dir, "tokenizers", hashlib.sha256(key.encode()).hexdigest()[:16])
    if os.path.isdir(final):
        return _load(final), final

    os.makedirs(os.path.dirname(final), exist_ok=True)
    t0 = time.time()
    tok = train_bpe(docs, cfg.vocab_size)
    seconds = time.time() - t0
    tmp = _tmp_dir(final)
    tok.save_pretrained(tmp)
    with open(os.path.join(tmp, "training.json"), "w") as f:
        json.dump({"settings": settings, "corpora": record, "vocab_size": len(tok),
                   "train_seconds": round(seconds, 3)}, f, indent=2)
    _publish(tmp, final)
    return _load(final), final


def _pretrained(cfg: TokenizerConfig, cache_dir: str) -> tuple[PreTrainedTokenizerFast, str]:
    if not cfg.path:
        raise ValueError("tokenizer.kind='pretrained' needs tokenizer.path (a tokenizer folder or tokenizer.json)")
    path = os.path.abspath(os.path.expanduser(cfg.path))
    if not os.path.exists(path):
        raise FileNotFoundError(f"tokenizer.path {cfg.path!r} does not exist; give a local tokenizer folder "
                                f"(save_pretrained layout) or a tokenizer.json file")
    if os.path.isdir(path):
        return AutoTokenizer.from_pretrained(path), path
    # a bare tokenizer.json (e.g. olmo_eval/tokenizers/*.json): save it as a folder so models can carry it
    from tokenizers import Tokenizer

    with open(path, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()[:16]
    final = os.path.join(cache_dir, "tokenizers", f"file-{digest}")
    if not os.path.isdir(final):
        raw = Tokenizer.from_file(path)
        vocab = raw.get_vocab()
        eos = EOS_TOKEN if EOS_TOKEN in vocab else None
        tok = PreTrainedTokenizerFast(tokenizer_object=raw, bos_token=eos, eos_token=eos, unk_token=eos,
                                      pad_token=PAD_TOKEN if PAD_TOKEN in vocab else eos,
                                      clean_up_tokenization_spaces=False)
        os.makedirs(os.path.dirname(final), exist_ok=True)
        tmp = _tmp_dir(final)
        tok.save_pretrained(tmp)
        _publish(tmp, final)
    return _load(final), final
