"""torch's process-wide CUDA matmul settings, changed for one block and restored after it (also when
the block raises).  The harness's exact reference and its emulation backends need fp32 products
(:func:`tf32_off`); a backend whose declared precision accumulates in fp32 needs split-K partial sums
reduced in fp32 too (:func:`reduced_precision_reductions_off`)."""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch


@contextlib.contextmanager
def tf32_off() -> Iterator[None]:
    """``torch.backends.cuda.matmul.allow_tf32`` False while the block runs (TF32 would round fp32
    operands to 11 significant bits)."""
    m = torch.backends.cuda.matmul
    saved = m.allow_tf32
    m.allow_tf32 = False
    try:
        yield
    finally:
        m.allow_tf32 = saved


_REDUCTION_FLAGS = ("allow_bf16_reduced_precision_reduction", "allow_fp16_reduced_precision_reduction")


@contextlib.contextmanager
def reduced_precision_reductions_off() -> Iterator[None]:
    """torch's ``allow_{bf16,fp16}_reduced_precision_reduction`` False while the block runs (cuBLAS
    then reduces split-K partial sums in fp32, not in the bf16/fp16 output type), each restored on
    exit to its whole previous state: where torch has the ``allow_splitk`` half of the setting
    (``<flag>_split_k``, read back separately; assigning a bare bool resets it to True), the pair
    ``(allow_reduced_precision, allow_splitk)``, else the bool."""
    m = torch.backends.cuda.matmul
    saved = {}
    for name in _REDUCTION_FLAGS:
        try:
            split_k = getattr(m, f"{name}_split_k")
        except AttributeError:  # a torch without the split-K half of the setting
            split_k = None
        allowed = getattr(m, name)
        saved[name] = allowed if split_k is None else (allowed, split_k)
    try:
        for name in _REDUCTION_FLAGS:
            setattr(m, name, False if isinstance(saved[name], bool) else (False, saved[name][1]))
        yield
    finally:
        for name in _REDUCTION_FLAGS:
            setattr(m, name, saved[name])
