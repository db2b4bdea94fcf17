"""An HF causal LM's LM head and final hidden states, and :func:`score_hidden_states`: the token statistics of
``head(hidden)`` through the chunked torch path or the fused Triton kernel (``score.kernel``).

- :class:`LMHead` / :func:`lm_head_of`: the head as a callable ``hidden -> logits`` (with Gemma's soft-capping);
  :func:`check_lm_head` guards against architectures that transform logits in a way it does not know.
- :func:`final_hidden_states`: the decoder stack's last hidden states, without computing logits.
- :func:`max_positions`: the model's context length.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

from proxy_exp.config import Kernel
from proxy_exp.score.stats import concat_stats, stats_in_row_blocks, token_stats_from_logits

# score.kernel: how score_hidden_states applies the LM head and reduces the vocabulary.
KERNELS: tuple[str, ...] = tuple(Kernel)


@dataclass(frozen=True)
class LMHead:
    """An HF model's LM head as a callable ``hidden[..., D] -> logits[..., V]`` (see :func:`lm_head_of`).

    ``module`` is ``model.get_output_embeddings()``; ``softcap`` the config's
    ``final_logit_softcapping`` (None: no capping). The fused kernel reads the module's weight and bias.
    """

    module: torch.nn.Module
    softcap: float | None = None

    def __call__(self, hidden: Tensor) -> Tensor:
        logits = self.module(hidden)
        if self.softcap:
            logits = torch.tanh(logits / self.softcap) * self.softcap
        return logits


def _placement_only(hook) -> bool:
    """True for accelerate hooks that only move inputs to the module's device (a sharded model's ``device_map``),
    not ones that load offloaded weights or change the computation."""
    hooks = getattr(hook, "hooks", None)
    if hooks is not None:  # accelerate's SequentialHook
        return all(_placement_only(h) for h in hooks)
    return type(hook).__name__ == "AlignDevicesHook" and not getattr(hook, "offload", True)


def linear_head_parts(head: Callable[[Tensor], Tensor]) -> tuple[Tensor, Tensor | None, float | None] | None:
    """``(weight, bias, softcap)`` when ``head`` is a plain linear map (an :class:`LMHead` or ``nn.Linear``), else None.

    A head sharded by accelerate onto one device (its hook only moves inputs there) is plain: the caller moves the
    hidden states to ``weight.device``. A module with other hooks (e.g. accelerate's offloading to CPU or disk) or
    weights off-device is not: the fused kernel would bypass what its forward does, so such heads stay on the torch
    path.
    """
    softcap = None
    if isinstance(head, LMHead):
        head, softcap = head.module, head.softcap
    if type(head) is not torch.nn.Linear:
        return None
    if head._forward_hooks or head.weight.is_meta:
        return None
    hook = getattr(head, "_hf_hook", None)
    if hook is not None and not _placement_only(hook):
        return None
    if hook is None and head._forward_pre_hooks:
        return None
    return head.weight, head.bias, softcap


def head_device(head: Callable[[Tensor], Tensor]) -> torch.device | None:
    """The device an LM head computes on (its weight's; None when offloaded, i.e. on the meta device)."""
    module = head.module if isinstance(head, LMHead) else head
    weight = getattr(module, "weight", None)
    return None if weight is None or weight.is_meta else weight.device


def resolve_kernel(kernel: str, head: Callable[[Tensor], Tensor], device: torch.device | None) -> tuple[str, str]:
    """The kernel ``score.kernel`` runs on this head and device, and why: ``("triton", "")`` or ``("torch", reason)``
    (reason empty when torch was asked for, or the head is on CPU where the torch path is the one there is).

    Raises ValueError when ``kernel=triton`` cannot run: the head is not a plain linear map."""
    if kernel not in KERNELS:
        raise ValueError(f"score.kernel must be one of {KERNELS}, got {kernel!r}")
    if kernel == Kernel.torch:
        return "torch", ""
    from proxy_exp.score import fused

    parts = linear_head_parts(head)
    if kernel == Kernel.triton:
        if parts is None:
            raise ValueError(
                f"score.kernel='triton' needs a plain linear LM head (nn.Linear, no hooks); got "
                f"{type(getattr(head, 'module', head)).__name__}: use score.kernel=torch or auto"
            )
        return "triton", ""
    if device is None or device.type != "cuda":
        return "torch", ""
    if not fused.triton_available():
        return "torch", "triton is not installed (pip install triton): the chunked torch path scores instead"
    if parts is None:
        return "torch", (f"the LM head ({type(getattr(head, 'module', head)).__name__}) is not a plain linear map on "
                         "one device (hooks or offloaded weights): the chunked torch path scores instead")
    weight = parts[0]
    if weight.dtype not in fused.KERNEL_DTYPES or weight.dim() != 2 or weight.shape[0] < 2:
        return "torch", (f"the LM head's weight ({weight.dtype}, shape {tuple(weight.shape)}) is not one the fused "
                         f"kernel takes ({', '.join(str(d)[6:] for d in fused.KERNEL_DTYPES)}; [V >= 2, D]): the "
                         "chunked torch path scores instead")
    return "triton", ""


@torch.no_grad()
def score_hidden_states(
    hidden: Tensor, head: Callable[[Tensor], Tensor], targets: Tensor, chunk_tokens: int, kernel: str = "auto",
    compiled: bool = False,
) -> dict[str, Tensor]:
    """Token statistics of ``head(hidden)`` at ``targets``, applying the head to ``chunk_tokens`` rows at a time.

    ``hidden`` is ``[T, D]`` (final hidden states, after the final norm), ``targets`` ``[T]``. The full
    ``[T, V]`` logits never exist at once (and no autograd graph keeps them): peak memory is
    ``chunk_tokens x V`` floats. Returns the same dict as :func:`token_stats_from_logits`, concatenated over chunks,
    on the head's device.

    ``kernel`` (score.kernel): ``torch`` is the chunked path above; ``triton`` the fused kernel of
    :mod:`proxy_exp.score.fused` (LM head and statistics in one pass over the vocabulary, no logits
    buffer, ``chunk_tokens`` unused; ``head`` must be a plain linear head, see :func:`linear_head_parts`);
    ``auto`` takes ``triton`` when the head is on CUDA, triton imports and the head is plain linear, else ``torch``
    (:func:`resolve_kernel`). The hidden states move to the head's device first (a model sharded over several
    devices ends on another device than its head may sit on). ``compiled``: the torch path's reductions run through
    torch.compile (:data:`STATS_BACKENDS`).
    """
    if chunk_tokens < 1:
        raise ValueError(f"score.chunk_tokens must be >= 1, got {chunk_tokens}")
    if hidden.dim() != 2:
        raise ValueError(f"hidden must be [T, D], got shape {tuple(hidden.shape)}")
    if targets.shape != hidden.shape[:1]:
        raise ValueError(f"targets must be [T] with T={hidden.shape[0]}, got shape {tuple(targets.shape)}")
    device = head_device(head)
    if device is not None and hidden.device != device:
        hidden = hidden.to(device)
    name, _ = resolve_kernel(kernel, head, hidden.device)
    if name == "triton":
        from proxy_exp.score import fused

        weight, bias, softcap = linear_head_parts(head)
        hidden = hidden.to(weight.device)
        return fused.fused_token_stats(hidden, weight, targets.to(weight.device), softcap=softcap, bias=bias)
    n = hidden.shape[0]
    if n == 0:
        return token_stats_from_logits(head(hidden), targets)
    parts = [
        stats_in_row_blocks(head(hidden[i : i + chunk_tokens]), targets[i : i + chunk_tokens], compiled)
        for i in range(0, n, chunk_tokens)
    ]
    return concat_stats(parts)


def text_config(model):
    config = model.config
    return config.get_text_config() if hasattr(config, "get_text_config") else config


def lm_head_of(model) -> LMHead:
    """A callable ``hidden[..., D] -> logits[..., V]`` for an HF causal LM (an :class:`LMHead`).

    It applies ``model.get_output_embeddings()`` and, when the config sets
    ``final_logit_softcapping`` (Gemma 2/3), ``cap * tanh(logits / cap)``. Architectures that scale
    logits in other ways are caught by :func:`check_lm_head`.
    """
    out = model.get_output_embeddings()
    if out is None:
        raise ValueError(
            f"{type(model).__name__} has no output embeddings (get_output_embeddings() is None); "
            "load the model with AutoModelForCausalLM so that it has an LM head"
        )
    cap = getattr(text_config(model), "final_logit_softcapping", None)
    return LMHead(out, float(cap) if cap else None)


def max_positions(model) -> int:
    """The model's context length: ``max_position_embeddings`` (or GPT-2's ``n_positions``)."""
    config = text_config(model)
    for name in ("max_position_embeddings", "n_positions"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    raise ValueError(
        f"{type(model).__name__}'s config has neither max_position_embeddings nor n_positions; "
        "set one of them in the model's config.json"
    )


def final_hidden_states(model, input_ids: Tensor, attention_mask: Tensor | None = None,
                        position_ids: Tensor | None = None) -> Tensor:
    """Last hidden states ``[B, L, D]`` after the final norm, without computing logits.

    Runs ``model.base_model`` (the decoder stack: ``GPT2Model``, ``LlamaModel``, ...), whose
    ``last_hidden_state`` is what the LM head consumes. ``position_ids`` restarting at 0 inside a row (and no
    ``attention_mask``) is transformers' padding-free layout: each packed sequence attends only to itself.
    """
    kwargs = {} if position_ids is None else {"position_ids": position_ids}
    out = model.base_model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False, **kwargs)
    return out.last_hidden_state


def check_lm_head(model, input_ids: Tensor, attention_mask: Tensor | None = None) -> None:
    """Raise ValueError unless ``lm_head_of(model)(final_hidden_states(...))`` equals ``model(...).logits``.

    A cheap guard (run it on a few tokens) against architectures that transform logits in a way
    :func:`lm_head_of` does not know (e.g. a logit scale), which would silently change every statistic.
    """
    reference = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits.float().cpu()
    ours = lm_head_of(model)(final_hidden_states(model, input_ids, attention_mask)).float().cpu()
    if attention_mask is not None:
        keep = attention_mask.bool().cpu()
        reference, ours = reference[keep], ours[keep]
    if reference.numel() == 0:
        return
    scale = reference.abs().max().item()
    diff = (reference - ours).abs().max().item()
    # Relative to the logits' scale: 1% leaves room for reduced-precision rounding, and any real
    # rescaling of the logits (>= 1%) fails whatever the magnitude of an untrained model's logits.
    if not diff <= 1e-2 * scale + 1e-6:
        raise ValueError(
            f"lm_head_of({type(model).__name__}) does not reproduce model(...).logits (max abs difference "
            f"{diff:.3g} at logit scale {scale:.3g}): this architecture transforms its logits in a way "
            "proxy_exp/score/lm_head.py:lm_head_of does not apply; add that transform there"
        )
