"""Build proxy models from config, count their parameters, and load any HF causal LM from a local path."""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from proxy_exp.config import ModelConfig


@dataclass
class ParamCounts:
    total: int
    non_embedding: int


def _d_ff(cfg: ModelConfig) -> int:
    if cfg.d_ff:
        return cfg.d_ff
    if cfg.arch == "gpt2":
        return 4 * cfg.d_model
    return max(32, int(round(8 * cfg.d_model / 3 / 32)) * 32)


def hf_config(cfg: ModelConfig, vocab_size: int, bos_id: int, eos_id: int, pad_id: int):
    """The transformers config of an architecture from ModelConfig."""
    if cfg.d_model % cfg.n_heads:
        raise ValueError(f"model.d_model={cfg.d_model} must be divisible by model.n_heads={cfg.n_heads}")
    if cfg.arch == "llama":
        from transformers import LlamaConfig

        if cfg.n_heads % cfg.n_kv_heads:
            raise ValueError(f"model.n_heads={cfg.n_heads} must be divisible by model.n_kv_heads={cfg.n_kv_heads}")
        return LlamaConfig(
            vocab_size=vocab_size, hidden_size=cfg.d_model, intermediate_size=_d_ff(cfg),
            num_hidden_layers=cfg.n_layers, num_attention_heads=cfg.n_heads, num_key_value_heads=cfg.n_kv_heads,
            max_position_embeddings=cfg.max_seq_len, tie_word_embeddings=True,
            bos_token_id=bos_id, eos_token_id=eos_id, pad_token_id=pad_id,
        )
    if cfg.arch == "gpt2":
        from transformers import GPT2Config

        return GPT2Config(
            vocab_size=vocab_size, n_embd=cfg.d_model, n_layer=cfg.n_layers, n_head=cfg.n_heads,
            n_inner=_d_ff(cfg), n_positions=cfg.max_seq_len, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
            bos_token_id=bos_id, eos_token_id=eos_id, pad_token_id=pad_id,
        )
    raise ValueError(f"model.arch={cfg.arch!r} is not buildable; use 'llama' or 'gpt2' (or set model.path to load one)")


def build_model(cfg: ModelConfig, vocab_size: int, bos_id: int, eos_id: int, pad_id: int, seed: int = 0):
    """A freshly initialised causal LM (deterministic for a seed)."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(hf_config(cfg, vocab_size, bos_id, eos_id, pad_id))
    return model.to(getattr(torch, cfg.dtype))


def count_params(model) -> ParamCounts:
    """Total parameters (tied weights once) and non-embedding parameters (no token/position embeddings, no LM head)."""
    seen: set[int] = set()
    total = 0
    for p in model.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            total += p.numel()
    emb: set[int] = set()
    for mod in (model.get_input_embeddings(), model.get_output_embeddings()):
        if mod is not None:
            emb.add(id(mod.weight))
    for name, p in model.named_parameters():
        if name.endswith(("wpe.weight", "embed_positions.weight")):
            emb.add(id(p))
    embedding = sum({id(p): p.numel() for p in model.parameters() if id(p) in emb}.values())
    return ParamCounts(total=total, non_embedding=total - embedding)


def estimate_param_counts(cfg: ModelConfig, vocab_size: int) -> ParamCounts:
    """Parameter counts without allocating weights (for dry runs and planning)."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(hf_config(cfg, vocab_size, 0, 0, 0))
    return count_params(model)


def load_model(cfg: ModelConfig, path: str | None = None):
    """Load a causal LM and its tokenizer from a local HF folder (or a GGUF file in it)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = path or cfg.path
    if not path:
        raise ValueError("model.path is empty: give a local Hugging Face model folder (model.path=/abs/dir)")
    if not os.path.isdir(path):
        raise FileNotFoundError(f"model.path={path!r} does not exist; give a local Hugging Face model folder")
    kw = {"gguf_file": cfg.gguf_file} if cfg.gguf_file else {}
    tok = AutoTokenizer.from_pretrained(path, **kw)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, cfg.dtype), **kw)
    model.eval()
    return model, tok
