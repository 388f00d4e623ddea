"""Guard bytes around every buffer the harness hands to a backend.

A backend that writes outside a buffer it was given (a store mask off by one row, a scale buffer
smaller than what the kernel writes at tiny M: vLLM PR #55456) corrupts whatever memory follows, and
usually no output the harness reads changes.  :func:`guarded` copies a tensor into a larger
allocation whose bytes before and after it hold :data:`GUARD_BYTE`, and hands out a view of the
middle; :func:`violations` reads the whole allocation back after the call and reports every guard
byte that changed.  Works on any device (the allocation is one ``torch.empty`` of bytes).
"""

from __future__ import annotations

import torch

GUARD_BYTE = 0xA5
"""The fill of the guard bytes (no special value in any NVFP4 or output format)."""

GUARD_BYTES = 256
"""Guard bytes on each side; a multiple of 256 keeps the view as aligned as a fresh allocation."""


def guarded(t: torch.Tensor, *, fill: torch.Tensor | float | None = None) -> torch.Tensor:
    """A contiguous copy of ``t`` (same shape, dtype, device; ``fill`` instead of ``t``'s values when
    given) inside an allocation with :data:`GUARD_BYTES` guard bytes on each side."""
    nbytes = t.numel() * t.element_size()
    base = torch.empty(nbytes + 2 * GUARD_BYTES, dtype=torch.uint8, device=t.device).fill_(GUARD_BYTE)
    body = base[GUARD_BYTES:GUARD_BYTES + nbytes].view(t.dtype).view(t.shape)
    if fill is None:
        body.copy_(t)
    else:
        body.fill_(fill)
    return body


def is_guarded(t: torch.Tensor) -> bool:
    """Whether ``t`` is a view made by :func:`guarded` (its storage has room for both guards)."""
    start = t.storage_offset() * t.element_size()
    return start == GUARD_BYTES and \
        t.untyped_storage().nbytes() == t.numel() * t.element_size() + 2 * GUARD_BYTES


def violations(t: torch.Tensor) -> str | None:
    """None when every guard byte around ``t`` (made by :func:`guarded`) is intact, else a one-line
    account: how many bytes before the start / after the end changed, the nearest at which offset."""
    storage = torch.empty(0, dtype=torch.uint8, device=t.device).set_(t.untyped_storage())
    start = t.storage_offset() * t.element_size()
    end = start + t.numel() * t.element_size()
    before = torch.nonzero(storage[:start] != GUARD_BYTE).reshape(-1)
    after = torch.nonzero(storage[end:] != GUARD_BYTE).reshape(-1)
    parts = []
    if before.numel():
        parts.append(f"{before.numel()} guard bytes before the start changed (nearest at -{start - int(before[-1])})")
    if after.numel():
        parts.append(f"{after.numel()} guard bytes after the end changed (nearest at +{int(after[0])})")
    return "; ".join(parts) or None


def check(buffers: dict[str, torch.Tensor]) -> list[str]:
    """Violations of every guarded buffer in ``buffers`` (name -> tensor), as ``"name: account"``."""
    return [f"{name}: {v}" for name, t in buffers.items() if is_guarded(t) and (v := violations(t))]
