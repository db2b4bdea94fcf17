"""Data layer: expert traces, pretraining corpora, the shared tokenizer and packed token shards.

- :mod:`proxy_exp.data.traces`: ``load_traces(cfg) -> list[dict]`` ({id, task, prompt, solution, answer}).
- :mod:`proxy_exp.data.corpora`: ``read_documents(cfg)`` and ``corpus_fingerprint(cfg)``.
- :mod:`proxy_exp.data.tokenizer`: ``build_tokenizer(cfg, corpora, cache_dir)`` (cached byte-level BPE).
- :mod:`proxy_exp.data.packing`: ``pack_corpus(...) -> PackedCorpus`` and ``batch_indices(...)``.

Modules are imported on use (``from proxy_exp.data.traces import load_traces``) so that importing the
package stays cheap.
"""
