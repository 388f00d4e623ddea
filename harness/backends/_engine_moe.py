"""Shared pieces of the serving-engine fused-MoE adapters (:mod:`harness.backends.vllm_moe`,
:mod:`harness.backends.sglang_moe`).

The engines' NVFP4 MoE entry points are Python functions whose module paths and parameter lists
change between releases (vLLM moved its MoE experts under ``fused_moe/experts/`` and added an
``activation`` enum; SGLang renamed fields of ``CutlassMoEParams``).  An adapter therefore names
the candidate modules of each function (newest first), reads the installed function's signature,
and passes only parameters it knows the meaning of: a required parameter it does not know is a
refusal naming that parameter (:func:`call_kwargs`), never a guess.

:func:`checkpoint_tensors` is the pure half every adapter shares: the harness's operands in the
checkpoint convention the engines' loaders take (ModelOpt NVFP4: packed e2m1 ``[E, N, K/2]`` uint8,
linear e4m3 block scales ``[E, N, K/16]``, ``weight_scale_2`` = the decode multiplier ``1 / global
scale``); it needs no engine and is checked on the CPU by inverting it.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch

from harness.backends._library import _import as import_cached, installed_version
from harness.backends.protocol import Unsupported
from harness.format import BLOCK_SIZE
from harness.grouped.moe import MoeOperands, weight_decode_scales
from harness.grouped.pipeline import ExpertWeights
from harness.layouts import real_scales


@dataclass
class CheckpointWeight:
    """One MoE weight of every expert in the ModelOpt checkpoint convention.

    weight: uint8 [E, n, k/2] (two e2m1 codes per byte, low nibble first); weight_scale: uint8
    [E, n, k/16], e4m3 bytes in row-major (linear) order; weight_scale_2: fp32 [E], the decode
    multiplier ``1 / global scale``.  Only the real region: no padding byte of the harness's buffers.
    """
    weight: torch.Tensor
    weight_scale: torch.Tensor
    weight_scale_2: torch.Tensor


def _checkpoint(w: ExpertWeights) -> CheckpointWeight:
    n, k = w.n, w.k
    packed = w.packed[:, :n, :k // 2].contiguous()
    scales = torch.stack([real_scales(s, w.layout, n, k // BLOCK_SIZE) for s in w.scales])
    return CheckpointWeight(packed, scales.contiguous(), weight_decode_scales(w).to(w.packed.device))


def checkpoint_tensors(ops: MoeOperands) -> tuple[CheckpointWeight, CheckpointWeight]:
    """(w13, w2) of ``ops`` in the checkpoint convention (pure; see :class:`CheckpointWeight`).
    ``w13`` keeps the harness's (and vLLM's / SGLang's) ``[gate; up]`` row order."""
    return _checkpoint(ops.w13), _checkpoint(ops.w2)


def first_attr(modules: Iterable[str], attr: str) -> tuple[Any | None, str]:
    """(the object, "") from the first importable module of ``modules`` that defines ``attr``, or
    (None, why not: each module's import error or the missing name)."""
    why = []
    for name in modules:
        mod, err = import_cached(name)
        if mod is None:
            why.append(f"{name}: {err}")
        elif hasattr(mod, attr):
            return getattr(mod, attr), ""
        else:
            why.append(f"{name} has no {attr}")
    return None, "; ".join(why)


def call_kwargs(fn: Callable, known: dict[str, Any], who: str) -> dict[str, Any]:
    """The keyword arguments for ``fn`` from ``known``: those of its parameters the adapter knows.
    Raises :class:`Unsupported` naming any required parameter of the installed ``fn`` that the
    adapter does not know (a release it was not written for)."""
    params = inspect.signature(fn).parameters
    unknown = [n for n, q in params.items() if n not in known and q.default is inspect.Parameter.empty
               and q.kind not in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)]
    if unknown:
        raise Unsupported(f"{who}: the installed {fn.__module__}.{fn.__name__} requires {unknown}, which this "
                          f"adapter does not know how to fill (written for the releases named in its docstring)")
    return {n: v for n, v in known.items() if n in params}


def library_version(distribution: str) -> str | None:
    return installed_version(distribution)


def require_cuda(name: str, ops: MoeOperands, what: str) -> None:
    if ops.hidden.device.type != "cuda":
        raise Unsupported(f"{name}: {what} runs CUDA kernels; the operands are on {ops.hidden.device}")


def module(name: str):
    return importlib.import_module(name)


def cutlass_fp4_operands(ops: MoeOperands, who: str) -> dict[str, Any]:
    """The operand arguments vLLM's ``run_cutlass_moe_fp4`` and SGLang's ``cutlass_moe_fp4`` (a port
    of it) share, from ``ops`` (pure): ``a`` (a copy: a call may scale it in place with
    ``apply_router_weight_on_input``), ``a1_gscale`` / ``a2_gscale`` [E] fp32, ``w1_fp4`` / ``w2_fp4``
    uint8 [E, N, K/2], ``w1_blockscale`` / ``w2_blockscale`` e4m3 in the 128x4 layout,
    ``w1_alphas`` / ``w2_alphas`` [E] fp32, ``topk_weights`` fp32 and ``topk_ids`` int32 [tokens, top_k],
    ``apply_router_weight_on_input=False``.  Raises ValueError when a weight is padded in N or K:
    both kernels take W13 as exactly [E, 2I, hidden/2] and W2 as [E, hidden, I/2]."""
    p = ops.problem
    i, h = p.intermediate, p.hidden
    if ops.w13.n_alloc != 2 * i or ops.w2.n_alloc != h or ops.w13.k != h or ops.w2.k != i:
        raise ValueError(f"{who}: weights must be unpadded in N (W13 {ops.w13.n_alloc} rows, expected "
                         f"{2 * i}; W2 {ops.w2.n_alloc}, expected {h})")
    return {
        "a": ops.hidden.contiguous().clone(),
        "a1_gscale": ops.fc1_input_scales.to(torch.float32),
        "w1_fp4": ops.w13.packed.contiguous(), "w1_blockscale": ops.w13.scales.view(torch.float8_e4m3fn),
        "w1_alphas": ops.alpha1.to(torch.float32),
        "a2_gscale": ops.fc2_input_scales.to(torch.float32),
        "w2_fp4": ops.w2.packed.contiguous(), "w2_blockscale": ops.w2.scales.view(torch.float8_e4m3fn),
        "w2_alphas": ops.alpha2.to(torch.float32),
        "topk_weights": ops.topk_weights.to(torch.float32), "topk_ids": ops.topk_ids.to(torch.int32),
        "apply_router_weight_on_input": False,
    }
