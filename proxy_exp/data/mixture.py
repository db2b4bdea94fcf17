"""What a training run reads: a corpus (one source or a recipe of weighted sources) as a deterministic, seeded
sequence order, of which every model size reads a prefix; the realised shares; a prefetching per-rank loader.

Order. Position ``p = step * global_batch + row`` of the run's stream reads one ``seq_len`` sequence.

- One source: sequence ``perm_e[p % n]`` with ``e = p // n`` and ``perm_e = default_rng(seed + e).permutation(n)``
  (:func:`proxy_exp.data.packing.batch_indices`): every epoch visits each sequence once.
- A recipe: position ``p`` goes to source ``schedule[p]`` (:func:`schedule`), which interleaves the sources so that
  among the first ``m`` positions source ``i`` holds ``w_i * m`` of them within ``(K + 1) / 2`` (K sources) for
  every ``m``: each source's k-th draw sits at "time" ``(k + 1/2) / w_i`` and draws are taken in time order (ties
  by source name), a deterministic weighted round robin. The source's k-th draw reads its sequence
  ``perm_(i,e)[k % n_i]``, ``e = k // n_i``, ``perm_(i,e) = default_rng([seed, crc32(name), e]).permutation(n_i)``.

The order depends on the sources' tokens, ``seq_len`` and the seed, never on the budget: a larger model reads a
longer prefix of the same order. A budget that needs more draws of a source than it has sequences repeats it
(epochs); :func:`realised_shares` reports shares and epochs, :func:`repeat_problems` the sources past their
``max_epochs``.
"""
from __future__ import annotations

import math
import zlib
from dataclasses import asdict, dataclass
from typing import Iterator

import numpy as np

from proxy_exp.data.packing import batch_indices
from proxy_exp.data.shards import TokenSource, _prefetch


def normalised(weights: dict[str, float]) -> dict[str, float]:
    total = float(sum(weights.values()))
    if not total > 0:
        raise ValueError(f"mixture weights must sum to more than 0, got {weights}")
    return {k: float(v) / total for k, v in weights.items()}


def schedule(weights: list[float], n: int) -> np.ndarray:
    """The source index (into ``weights``) of each of the first ``n`` positions of a recipe's stream."""
    w = np.asarray(weights, dtype=np.float64)
    if w.ndim != 1 or w.size == 0 or (w <= 0).any():
        raise ValueError(f"schedule needs positive weights, got {weights}")
    w = w / w.sum()
    if n <= 0:
        return np.zeros(0, dtype=np.int16)
    if w.size == 1:
        return np.zeros(n, dtype=np.int16)
    # Source i's k-th draw sits at time (k + 1/2) / w_i; the order is the merge of all sources' draws (ties by
    # index), and its first n positions are the n earliest draws. Only the first m_i draws of each source are made
    # here, which gives that prefix exactly as long as m_i >= c_i, the draws source i holds among the first n.
    # Bound on c_i: let T be the time of the n-th draw. Source j has ceil(w_j T - 1/2) >= w_j T - 1/2 draws
    # strictly before T, and fewer than n draws are strictly before T, so sum_j (w_j T - 1/2) <= n - 1, i.e.
    # T <= n - 1 + K/2 (K sources), and c_i <= #{k : (k + 1/2) / w_i <= T} <= w_i T + 1/2
    # <= w_i (n - 1 + K/2) + 1/2. (An upper bound of w_i n + 2 fails once w_i (K - 2) > 3: with K = 25 and
    # w_0 = 1/2, source 0 needs up to w_0 n + 6 draws.) m_i = floor(w_i (n + K/2)) + 2 exceeds that bound by
    # more than w_i + 1/2, ample for rounding, so every schedule(n) is schedule(N)[:n] for n < N; no source
    # needs more than n draws.
    k = w.size
    times, which = [], []
    for i, wi in enumerate(w):
        m = min(n, int(math.floor(wi * (n + k / 2))) + 2)
        times.append((np.arange(m, dtype=np.float64) + 0.5) / wi)
        which.append(np.full(m, i, dtype=np.int16))
    t, s = np.concatenate(times), np.concatenate(which)
    order = np.lexsort((s, t))[:n]
    return s[order]


def _draws_before(w: np.ndarray, t: float) -> np.ndarray:
    """Per source, how many of its draw times ``(k + 1/2) / w_i`` (as :func:`schedule` computes them in float64) are
    strictly below ``t``: an estimate from the closed form, corrected against the float times themselves."""
    est = np.maximum(np.floor(w * t - 0.5).astype(np.int64) - 2, 0)
    out = est.copy()
    for i, wi in enumerate(w):
        ks = est[i] + np.arange(6, dtype=np.int64)
        out[i] = est[i] + int(((ks.astype(np.float64) + 0.5) / wi < t).sum())
    return out


def draws(weights: list[float], n: int) -> np.ndarray:
    """How many of the first ``n`` positions each source holds: ``bincount(schedule(weights, n))``, counted in
    O(K^2) for K sources instead of materialising n positions (a 1B budget is ~300M of them). The n-th draw's time
    T lies in ``[n - K/2 - 1, n + K/2]`` (the bound in :func:`schedule`, and count(T) <= T + K/2); every draw before
    that window is counted in closed form, the O(K) draws inside it are ordered as the schedule orders them (time,
    then source index) and the first ones taken."""
    w = np.asarray(weights, dtype=np.float64)
    if w.ndim != 1 or w.size == 0 or (w <= 0).any():
        raise ValueError(f"draws needs positive weights, got {weights}")
    w = w / w.sum()
    k = w.size
    if n <= 0:
        return np.zeros(k, dtype=np.int64)
    if k == 1:
        return np.array([n], dtype=np.int64)
    lo, hi = n - k / 2 - 1.0, n + k / 2 + 1.0
    base = _draws_before(w, lo) if lo > 0 else np.zeros(k, dtype=np.int64)
    upto = _draws_before(w, np.nextafter(hi, np.inf))  # draws at times <= hi
    times = np.concatenate([(np.arange(b, u, dtype=np.float64) + 0.5) / wi for b, u, wi in zip(base, upto, w)])
    which = np.concatenate([np.full(u - b, i, dtype=np.int64) for i, (b, u) in enumerate(zip(base, upto))])
    need = n - int(base.sum())
    if not 0 <= need <= times.size:  # the window bound failed: cannot happen, but never return a wrong count
        return np.bincount(schedule(weights, n), minlength=k).astype(np.int64)
    taken = which[np.lexsort((which, times))[:need]]
    return base + np.bincount(taken, minlength=k).astype(np.int64)


@dataclass
class SourceShare:
    """One source of a run: its weight, the share of the run's tokens it gives, and how often it is repeated."""

    source: str
    weight: float
    share: float
    sequences: int  # drawn by the run
    available: int  # sequences the source has
    epochs: float  # sequences / available
    max_epochs: float
    estimated: bool = False  # sizes estimated from file sizes (plans before tokenization)

    @property
    def over(self) -> bool:
        return self.epochs > self.max_epochs + 1e-9

    def as_dict(self) -> dict:
        return asdict(self)


def realised_shares(weights: dict[str, float], available: dict[str, int], positions: int,
                    max_epochs: dict[str, float], estimated: frozenset = frozenset()) -> list[SourceShare]:
    """Shares and epochs of ``positions`` sequences drawn from sources of ``available`` sequences each
    (``estimated``: the sources whose sizes are estimates)."""
    names = sorted(weights)
    w = normalised(weights)
    counts = draws([w[n] for n in names], positions)
    out = []
    for name, c in zip(names, counts):
        avail = int(available[name])
        out.append(SourceShare(name, w[name], float(c) / positions if positions else 0.0, int(c), avail,
                               float(c) / avail if avail else float("inf"), float(max_epochs[name]),
                               name in estimated))
    return out


def repeat_problems(corpus: str, shares: list[SourceShare]) -> list[str]:
    """One line per source that a budget repeats past its max_epochs, naming the fix."""
    return [f"corpus {corpus!r}: the budget reads source {s.source!r} {s.epochs:.2f} times ({s.sequences:,} of "
            f"{s.available:,} sequences{', estimated' if s.estimated else ''}), past its max_epochs={s.max_epochs:g}; "
            f"add data, lower the budget or the source's weight, or raise max_epochs" for s in shares if s.over]


def _source_perm(n: int, seed: int, tag: int, epoch: int) -> np.ndarray:
    perm = np.random.default_rng([seed, tag, epoch]).permutation(n)
    perm.flags.writeable = False
    return perm


class TrainData:
    """The sequences of a run: ``rows(step, lo, hi)`` are rows ``[lo, hi)`` of step ``step``'s global batch (a rank
    reads only its own rows). One source reproduces :func:`batch_indices`; a recipe follows :func:`schedule`."""

    def __init__(self, sources: dict[str, TokenSource], weights: dict[str, float], seed: int, global_batch: int,
                 steps: int, max_epochs: dict[str, float] | None = None):
        if set(sources) != set(weights):
            raise ValueError(f"sources {sorted(sources)} and weights {sorted(weights)} differ")
        self.names = sorted(sources)
        self.sources = sources
        self.weights = normalised(weights)
        self.seed, self.global_batch, self.steps = int(seed), int(global_batch), int(steps)
        self.max_epochs = max_epochs or {n: float("inf") for n in self.names}
        lens = {s.seq_len for s in sources.values()}
        if len(lens) != 1:
            raise ValueError(f"sources of one run must share seq_len, got {sorted(lens)}")
        self.seq_len = lens.pop()
        self.positions = self.steps * self.global_batch
        self.single = len(self.names) == 1
        if not self.single:
            sched = schedule([self.weights[n] for n in self.names], self.positions)
            ordinal = np.empty(self.positions, dtype=np.int64)
            for i in range(len(self.names)):
                mask = sched == i
                ordinal[mask] = np.arange(int(mask.sum()), dtype=np.int64)
            self._sched, self._ordinal = sched, ordinal
            self._tags = [zlib.crc32(n.encode()) for n in self.names]
            self._perms: dict[tuple[int, int], np.ndarray] = {}

    @property
    def num_sequences(self) -> int:
        """Sequences the sources hold together."""
        return sum(s.num_sequences for s in self.sources.values())

    def shares(self) -> list[SourceShare]:
        return realised_shares(self.weights, {n: self.sources[n].num_sequences for n in self.names}, self.positions,
                               self.max_epochs)

    def rows(self, step: int, lo: int = 0, hi: int | None = None) -> np.ndarray:
        hi = self.global_batch if hi is None else hi
        if self.single:
            src = self.sources[self.names[0]]
            idx = batch_indices(src.num_sequences, step, self.global_batch, self.seed)[lo:hi]
            return src.get_batch(idx)
        pos = step * self.global_batch + np.arange(lo, hi, dtype=np.int64)
        if pos.size and pos.max() >= self.positions:
            raise IndexError(f"step {step} is past the {self.steps} steps this run's order was built for")
        which, k = self._sched[pos], self._ordinal[pos]
        out = np.empty((pos.size, self.seq_len), dtype=np.int64)
        for i in np.unique(which).tolist():
            mask = which == i
            src = self.sources[self.names[i]]
            n = src.num_sequences
            ki = k[mask]
            epochs, offsets = np.divmod(ki, n)
            seq = np.empty(ki.size, dtype=np.int64)
            for e in np.unique(epochs).tolist():
                m = epochs == e
                seq[m] = self._perm(i, n, int(e))[offsets[m]]
            out[mask] = src.get_batch(seq)
        return out

    def _perm(self, i: int, n: int, epoch: int) -> np.ndarray:
        """Source ``i``'s permutation of epoch ``epoch``; each source keeps its last two epochs' (a run moves forward)."""
        perm = self._perms.get((i, epoch))
        if perm is None:
            perm = self._perms[(i, epoch)] = _source_perm(n, self.seed, self._tags[i], epoch)
            for key in [k for k in self._perms if k[0] == i and k[1] < epoch - 1]:
                del self._perms[key]
        return perm

    def prefetch(self, steps: range, lo: int, hi: int, depth: int = 2) -> Iterator[np.ndarray]:
        """``rows(step, lo, hi)`` for each step of ``steps``, read ``depth`` steps ahead on a background thread."""
        return _prefetch((self.rows(s, lo, hi) for s in steps), depth)


def open_train_data(corpus, tokenizer, tok_dir: str, seq_len: int, cache_dir: str, seed: int, global_batch: int,
                    steps: int, settings=None, progress: bool = True, tokenize_missing: bool = True) -> TrainData:
    """The sequences a run of ``steps`` steps reads from ``corpus`` (one source, or a recipe's weighted sources),
    tokenizing missing shards here when ``tokenize_missing`` (a standalone run; in a campaign tokenize units did)."""
    from proxy_exp.data.shards import open_source

    srcs, mixture, weights, max_epochs = _recipe(corpus)
    views = {name: open_source(src, tokenizer, tok_dir, seq_len, cache_dir, tokenize_missing, settings, progress,
                               name=f"{corpus.name}/{name}" if mixture else name) for name, src in srcs.items()}
    _check_one_batch(corpus.name, {n: v.total_tokens for n, v in views.items()}, mixture, global_batch, seq_len)
    return TrainData(views, weights, seed, global_batch, steps, max_epochs)


def _recipe(corpus) -> tuple[dict, bool, dict[str, float], dict[str, float]]:
    """A corpus as a recipe: its sources, whether it is a mixture, each source's weight (1 for a single source) and
    its max_epochs."""
    from proxy_exp.data.corpora import corpus_sources

    srcs = corpus_sources(corpus)
    mixture = str(corpus.source) == "mixture"
    weights = {name: (float(src.weight) if mixture else 1.0) for name, src in srcs.items()}
    return srcs, mixture, weights, {name: float(src.max_epochs) for name, src in srcs.items()}


def _check_one_batch(corpus: str, tokens: dict[str, int], mixture: bool, global_batch: int, seq_len: int) -> None:
    """A corpus (a recipe: all its sources together) must hold at least one global batch of sequences; a smaller
    one would be read over and over within every step. Raises ValueError naming the corpus and the fix."""
    have, need = sum(tokens.values()), global_batch * seq_len
    if have >= need:
        return
    what = f"recipe {corpus!r} ({len(tokens)} sources together)" if mixture else f"corpus {corpus!r}"
    raise ValueError(f"{what} holds {have:,} tokens, fewer than one batch of pretrain.global_batch={global_batch} x "
                     f"pretrain.seq_len={seq_len} = {need:,} tokens: add data (corpus.paths, corpus.max_bytes) or "
                     "lower pretrain.global_batch or pretrain.seq_len")


# ------------------------------------------------------------------------------------------------ plans (no reading)
EST_BYTES_PER_TOKEN = 4.0  # plans before tokenization: UTF-8 bytes per token (BPE-50k on English text: ~4-4.5)
EST_TEXT_PER_FILE_BYTE = {"gzip": 3.0, "zstd": 4.0, "parquet": 2.5, "jsonl": 0.9, "arrow": 0.95, "text": 1.0}


def _estimated_bytes(src) -> int:
    """Text bytes of a source estimated from its files' sizes (no file is read)."""
    import os

    from proxy_exp.data.corpora import packaged_files
    from proxy_exp.data.readers import file_stat, input_files, is_file_source, split_compression

    if not is_file_source(src):
        total = sum(os.path.getsize(p) for p in packaged_files(str(src.source)))
    else:
        total = 0.0
        for p in input_files(src):
            base, comp = split_compression(p)
            ratio = EST_TEXT_PER_FILE_BYTE[comp] if comp else 1.0
            kind = "parquet" if base.endswith((".parquet", ".pq")) else "arrow" if base.endswith(".arrow") else (
                "jsonl" if str(src.source) in ("jsonl", "hf_dataset") else "text")
            total += file_stat(p).st_size * ratio * EST_TEXT_PER_FILE_BYTE[kind]
    total = int(total)
    return min(total, src.max_bytes) if src.max_bytes > 0 else total


class SharePlanner:
    """The shares and epochs budgets would realise, without reading any corpus: exact from the token shards when
    the tokenizer and every shard of a source exist, else estimated from file sizes (:data:`EST_BYTES_PER_TOKEN`;
    marked ``estimated``). The saved tokenizer is found once (without building or loading it: no transformers),
    each source's size found once per sequence length."""

    def __init__(self, tokenizer_cfg, tokenizer_corpora: dict, cache_dir: str):
        from proxy_exp.data.tokenizer import _load, saved_tokenizer, saved_tokenizer_dir

        self.cache_dir = cache_dir
        self.tok_dir = saved_tokenizer_dir(tokenizer_cfg, tokenizer_corpora, cache_dir)
        self.tok = (saved_tokenizer(self.tok_dir) or _load(self.tok_dir)) if self.tok_dir else None
        self._sizes: dict[str, tuple[int, bool]] = {}

    def available(self, src, seq_len: int) -> tuple[int, bool]:
        """(sequences of ``seq_len`` the source holds, whether that is an estimate)."""
        import json

        from proxy_exp.data.corpora import source_key
        from proxy_exp.data.shards import open_source

        key = json.dumps([source_key(src), list(src.paths), seq_len], sort_keys=True, default=str)
        if key not in self._sizes:
            n = None
            if self.tok is not None:
                try:
                    n = open_source(src, self.tok, self.tok_dir, seq_len, self.cache_dir, tokenize_missing=False,
                                    progress=False).num_sequences
                except (FileNotFoundError, ValueError):
                    n = None
            self._sizes[key] = (n, False) if n is not None else (
                int(_estimated_bytes(src) / EST_BYTES_PER_TOKEN) // seq_len, True)
        return self._sizes[key]

    def shares(self, corpus, seq_len: int, positions: int) -> list[SourceShare]:
        srcs, _, weights, max_epochs = _recipe(corpus)
        sizes = {name: self.available(src, seq_len) for name, src in srcs.items()}
        return realised_shares(weights, {n: v[0] for n, v in sizes.items()}, positions, max_epochs,
                               frozenset(n for n, v in sizes.items() if v[1]))


def planned_shares(corpus, tokenizer_cfg, tokenizer_corpora: dict, cache_dir: str, seq_len: int,
                   positions: int) -> list[SourceShare]:
    """:meth:`SharePlanner.shares` of one corpus (``tokenizer_corpora``: a BPE's sample, {} = the corpus alone)."""
    return SharePlanner(tokenizer_cfg, tokenizer_corpora or {corpus.name: corpus}, cache_dir).shares(
        corpus, seq_len, positions)
