"""Scoring: token statistics over expert traces, token weightings and their aggregation into proxies.

- :mod:`proxy_exp.score.stats`: ``token_stats_from_logits``, ``score_hidden_states`` (chunked LM head,
  or the fused kernel per ``kernel``), ``lm_head_of``, ``final_hidden_states``, ``check_lm_head``, ``max_positions``.
- :mod:`proxy_exp.score.fused`: ``fused_token_stats(hidden, weight, targets, softcap)``: LM head and
  statistics in one Triton pass over the vocabulary (CUDA; optional ``triton``).
- :mod:`proxy_exp.score.scorer`: ``score_traces(model, tokenizer, traces, cfg) -> ScoreOutput`` (one row
  per scored token) and ``token_frequencies``.
- :mod:`proxy_exp.score.aggregate`: ``token_weights`` and ``aggregate(tokens, cfg, freq) -> AggregateResult``
  (80 proxies per trace, per task and overall; needs no torch).

Modules are imported on use so that importing the package stays cheap.
"""
