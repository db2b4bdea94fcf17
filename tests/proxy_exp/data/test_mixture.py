"""Recipes: weighted sources read in a deterministic, seeded order whose realised shares are within (K + 1) / 2
sequences of the weights for every prefix; every model size reads a prefix of the same order; epochs and caps."""
from __future__ import annotations

import numpy as np
import pytest

from proxy_exp.config import CorpusConfig, MixSourceConfig, TokenizeConfig
from proxy_exp.data.corpora import corpus_sources
from proxy_exp.data.mixture import TrainData, draws, open_train_data, planned_shares, repeat_problems, schedule
from proxy_exp.data.packing import batch_indices

from tests.helpers import SMALL_CORPUS_BYTES  # noqa: E402

SETTINGS = TokenizeConfig(threads=2)


def test_schedule_realises_the_weights_in_every_prefix():
    rng = np.random.default_rng(0)
    for weights in ([0.5, 0.3, 0.2], [0.7, 0.1, 0.1, 0.1], list(rng.dirichlet(np.ones(6))), [1e-3, 1 - 1e-3]):
        w = np.asarray(weights) / np.sum(weights)
        n = 20_000
        s = schedule(list(weights), n)
        counts = np.cumsum(np.eye(len(w), dtype=np.int64)[s], axis=0)  # counts in every prefix
        prefix = np.arange(1, n + 1)[:, None]
        assert np.abs(counts - w[None, :] * prefix).max() <= (len(w) + 1) / 2, weights
        np.testing.assert_array_equal(schedule(list(weights), 777), s[:777])  # a shorter run reads a prefix
        np.testing.assert_array_equal(draws(list(weights), n), counts[-1])
    with pytest.raises(ValueError, match="positive weights"):
        schedule([0.5, 0.0], 10)


@pytest.mark.parametrize("weights", [
    [0.5] + [0.5 / 24] * 24,  # one heavy source and 24 light ones (DataDecide-sized recipes: 25 sources)
    [0.4, 0.2] + [0.4 / 23] * 23,  # two heavy ones; equal light weights keep their draws in phase (worst case)
    list(np.random.default_rng(7).dirichlet(np.full(25, 0.3))),  # skewed random weights
], ids=["half-and-24", "two-heavy-and-23", "dirichlet"])
def test_schedule_prefix_holds_with_many_sources(weights):
    """With K = 25 a source can hold up to w * n + (w * (K - 2) + 1) / 2 of the first n positions, more than the
    ceil(w * n) + 2 draws per source the schedule once made: then schedule(n) was not schedule(N)[:n] and the heavy
    source fell short."""
    w = np.asarray(weights) / np.sum(weights)
    k, big = len(w), 20_000
    full = schedule(list(weights), big)
    counts = np.cumsum(np.eye(k, dtype=np.int64)[full], axis=0)  # counts in every prefix
    dev = counts - w[None, :] * np.arange(1, big + 1)[:, None]
    assert np.abs(dev).max() <= (k + 1) / 2  # the stated tolerance
    # and the per-source bounds: -(w K / 2 + 1/2) <= count - w m <= w (K / 2 - 1) + 1/2
    assert (dev <= (w * (k / 2 - 1) + 0.5)[None, :] + 1e-9).all()
    assert (dev >= -(w * k / 2 + 0.5)[None, :] - 1e-9).all()
    for n in np.random.default_rng(1).integers(1, big, 300).tolist() + [2994]:
        np.testing.assert_array_equal(schedule(list(weights), n), full[:n], err_msg=f"n={n}")
        np.testing.assert_array_equal(draws(list(weights), n), counts[n - 1])


def _recipe(**weights) -> CorpusConfig:
    mix = {name: MixSourceConfig(name=name, source=name, max_bytes=SMALL_CORPUS_BYTES, weight=w)
           for name, w in weights.items()}
    return CorpusConfig(name="recipe", source="mixture", mix=mix)


def test_recipe_over_real_sources(bpe, cache_dir):
    tok, tok_dir = bpe
    recipe = _recipe(wikipedia=0.5, shakespeare=0.3, python_stdlib=0.2, champ_math=0.0)
    assert set(corpus_sources(recipe)) == {"wikipedia", "shakespeare", "python_stdlib"}  # weight 0: left out
    steps, batch = 60, 16
    data = open_train_data(recipe, tok, tok_dir, 32, cache_dir, seed=3, global_batch=batch, steps=steps,
                           settings=SETTINGS, progress=False)
    n = steps * batch
    shares = {s.source: s for s in data.shares()}
    tolerance = (3 + 1) / 2 / n  # (K + 1) / 2 sequences in n
    for name, w in {"wikipedia": 0.5, "shakespeare": 0.3, "python_stdlib": 0.2}.items():
        assert abs(shares[name].share - w) <= tolerance, (name, shares[name])
        assert shares[name].epochs == pytest.approx(shares[name].sequences / data.sources[name].num_sequences)
    # every row is a real sequence of the source the schedule names, and no sequence repeats within an epoch
    rows = np.concatenate([data.rows(s) for s in range(steps)])
    by_source = {name: {tuple(r) for r in v.get_batch(np.arange(v.num_sequences))} for name, v in data.sources.items()}
    sched = schedule([data.weights[k] for k in data.names], n)
    for r, i in zip(rows, sched):
        assert tuple(r) in by_source[data.names[i]]
    for i, name in enumerate(data.names):
        mine = [tuple(r) for r, j in zip(rows, sched) if j == i]
        assert len(set(mine)) == len(mine)  # < one epoch here: each sequence at most once
    # deterministic, seeded, and a smaller model's budget reads a prefix of the same order
    again = open_train_data(recipe, tok, tok_dir, 32, cache_dir, 3, batch, steps, progress=False)
    np.testing.assert_array_equal(again.rows(7), data.rows(7))
    other = open_train_data(recipe, tok, tok_dir, 32, cache_dir, 4, batch, steps, progress=False)
    assert not np.array_equal(other.rows(7), data.rows(7))
    short = open_train_data(recipe, tok, tok_dir, 32, cache_dir, 3, batch, 10, progress=False)
    np.testing.assert_array_equal(np.concatenate([short.rows(s) for s in range(10)]), rows[: 10 * batch])
    # a rank reads only its rows; prefetched rows equal direct reads
    np.testing.assert_array_equal(np.concatenate([data.rows(5, 0, 8), data.rows(5, 8, 16)]), data.rows(5))
    np.testing.assert_array_equal(np.concatenate(list(data.prefetch(range(4, 9), 8, 16))),
                                  np.concatenate([data.rows(s, 8, 16) for s in range(4, 9)]))


def test_one_source_reads_the_batch_indices_order(bpe, cache_dir):
    tok, tok_dir = bpe
    corpus = CorpusConfig(name="plays", source="shakespeare", max_bytes=SMALL_CORPUS_BYTES)
    data = open_train_data(corpus, tok, tok_dir, 32, cache_dir, seed=5, global_batch=8, steps=20, progress=False)
    (view,) = data.sources.values()
    for step in (0, 7, 19):
        np.testing.assert_array_equal(data.rows(step), view.get_batch(batch_indices(view.num_sequences, step, 8, 5)))


def test_repeating_past_the_cap_is_reported(bpe, cache_dir, tok_corpora):
    from tests.proxy_exp.data.conftest import TOK_CFG

    tok, tok_dir = bpe
    recipe = _recipe(wikipedia=0.9, shakespeare=0.1)
    recipe.mix["wikipedia"].max_bytes = 20_000
    recipe.mix["wikipedia"].max_epochs = 2.0
    data = open_train_data(recipe, tok, tok_dir, 32, cache_dir, 0, 16, 100, progress=False)
    wiki = next(s for s in data.shares() if s.source == "wikipedia")
    assert wiki.epochs > 2 and wiki.over
    (line,) = repeat_problems("recipe", data.shares())
    assert "'wikipedia'" in line and "max_epochs=2" in line
    rows = np.concatenate([data.rows(s) for s in range(100)])  # repeats go on epoch after epoch, still seeded
    assert len(rows) == 1600
    # a plan sees the same figures from the shards (exact, not estimated), without reading any corpus
    planned = planned_shares(recipe, TOK_CFG, tok_corpora, cache_dir, 32, 1600)
    assert planned == data.shares() and not any(p.estimated for p in planned)
    # before tokenization a plan estimates from file sizes
    assert all(p.estimated for p in planned_shares(recipe, TOK_CFG, tok_corpora, cache_dir + "-empty", 32, 1600))


def test_train_data_checks_its_inputs():
    with pytest.raises(ValueError, match="differ"):
        TrainData({}, {"a": 1.0}, 0, 1, 1)
    with pytest.raises(ValueError, match="every weight of corpus.mix is 0"):
        corpus_sources(_recipe(wikipedia=0.0))
    with pytest.raises(ValueError, match="needs corpus.mix"):
        corpus_sources(CorpusConfig(name="r", source="mixture"))
