"""Input memory layouts: the same logical activations handed to a backend as a non-contiguous view.

Serving engines hand quantizers and linear layers views, not fresh dense tensors: the Q, K or V
columns of a fused QKV projection's output, a transposed-back (column-major) tensor, a 3-D batch
whose batches are not packed, a tensor starting part-way into its storage.  A kernel that reads
``x.data_ptr()`` as if the tensor were dense gets row 0 right and every later row from the wrong
memory, and raises nothing (vLLM PR #49092: a column slice of a wider tensor quantized as if dense).

:data:`INPUT_LAYOUTS` names the layouts (the ``input_layout`` field of
:class:`harness.problem.GemmProblem`); :func:`strided_view` builds one.  The memory around the
view that is not part of it (the wider tensor's other columns, the gaps between batches, the bytes
before the storage offset) holds NaN, so a kernel that reads it is seen; the whole storage sits
inside guard bytes (:mod:`harness.guard`) so a write outside it is seen too, and
:func:`storage_changed` tells whether the backend wrote into its input's storage.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from harness import guard

INPUT_LAYOUTS: tuple[str, ...] = ("contiguous", "column_slice", "column_major", "batch_strided", "storage_offset")
"""How the activations are laid out in memory (the first is the default, and the shrink target):

* ``contiguous``: dense row-major, storage offset 0 (what every other dimension uses);
* ``column_slice``: columns ``[c0, c0 + k)`` of a wider row-major tensor ``[..., c0 + k + 16]``
  (a Q/K/V slice of a fused projection's output); row stride ``k + c0 + 16`` elements, ``c0`` a
  multiple of 16 from the seed, the other columns NaN;
* ``column_major``: ``x.transpose(-1, -2).contiguous().transpose(-1, -2)``, stride 1 along the rows;
* ``batch_strided``: the leading dimension strided with an odd gap of NaN elements (a 3-D
  ``[batch, seq, k]`` input: between batches; a 2-D input: between rows);
* ``storage_offset``: dense, but starting a few 16-element blocks into its storage (NaN before it).
"""

CONTIGUOUS = INPUT_LAYOUTS[0]


def parse_input_layout(value: object, field: str = "problem.input_layout") -> str:
    """``value`` when it is one of :data:`INPUT_LAYOUTS`; else ValueError naming ``field``."""
    if not isinstance(value, str) or value not in INPUT_LAYOUTS:
        raise ValueError(f"{field}={value!r}: expected one of {list(INPUT_LAYOUTS)}")
    return value


@dataclass(frozen=True)
class StridedInput:
    """A view of the activations (``view``) over a storage the harness owns (``storage``: a 1-D
    guarded tensor of the view's dtype, whose bytes outside the view hold NaN)."""
    view: torch.Tensor
    storage: torch.Tensor
    layout: str

    def describe(self) -> dict:
        """The view's geometry for a result's ``measure`` (strides and offset in elements)."""
        return {"input_layout": self.layout, "strides": list(self.view.stride()),
                "storage_offset": int(self.view.storage_offset() - self.storage.storage_offset())}


def _placement(shape: tuple[int, ...], layout: str, seed: int) -> tuple[int, tuple[int, ...], int]:
    """(storage elements, strides, offset) of a view of ``shape`` in ``layout``."""
    k = shape[-1]
    lead = shape[:-1]
    if layout == "contiguous":
        strides, size, offset = _dense_strides(shape), _numel(shape), 0
    elif layout == "column_slice":
        c0 = 16 * (1 + seed % 3)
        width = c0 + k + 16
        strides = _dense_strides((*lead, width))
        size, offset = _numel(lead) * width, c0
    elif layout == "column_major":
        if len(shape) == 2:
            strides = (1, shape[0])
        else:  # [batch, seq, k]: each batch's [seq, k] matrix column-major
            strides = (shape[1] * k, 1, shape[1])
        size, offset = _numel(shape), 0
    elif layout == "batch_strided":
        gap = 2 * (seed % 4) + 1  # odd: later batches start off any vector alignment
        inner = _numel(shape[1:])
        strides = (inner + gap, *_dense_strides(shape[1:]))
        size, offset = shape[0] * (inner + gap), 0
    elif layout == "storage_offset":
        offset = 16 * (1 + seed % 4)
        strides, size = _dense_strides(shape), offset + _numel(shape)
    else:
        parse_input_layout(layout)
        raise AssertionError(layout)
    return size, strides, offset


def _numel(shape) -> int:
    n = 1
    for s in shape:
        n *= int(s)
    return n


def _dense_strides(shape) -> tuple[int, ...]:
    strides, acc = [], 1
    for s in reversed(shape):
        strides.append(acc)
        acc *= max(int(s), 1)
    return tuple(reversed(strides))


def strided_view(x: torch.Tensor, layout: str, seed: int = 0) -> StridedInput:
    """``x``'s values (2-D ``[rows, k]`` or 3-D ``[batch, seq, k]``) as a view in ``layout``
    (:data:`INPUT_LAYOUTS`; ``seed`` picks the column offset, gap or storage offset), over a fresh
    guarded storage whose bytes outside the view are NaN.  ``layout`` ``contiguous`` gives a dense
    copy in a guarded storage.  Raises ValueError for an unknown layout or a tensor of another rank."""
    parse_input_layout(layout, "input_layout")
    if x.ndim not in (2, 3):
        raise ValueError(f"input_layout={layout!r}: expected a 2-D or 3-D tensor, got shape {tuple(x.shape)}")
    size, strides, offset = _placement(tuple(x.shape), layout, seed)
    storage = guard.guarded(torch.empty(max(size, 1), dtype=x.dtype, device=x.device), fill=float("nan"))
    view = storage.as_strided(tuple(x.shape), strides, storage.storage_offset() + offset)
    view.copy_(x)
    return StridedInput(view, storage, layout)


def snapshot(s: StridedInput) -> torch.Tensor:
    """A copy of the bytes of ``s``'s storage (for :func:`storage_changed`)."""
    return s.storage.view(torch.uint8).clone()


def storage_changed(s: StridedInput, before: torch.Tensor) -> str | None:
    """None when ``s``'s storage holds the bytes of ``before``; else a one-line account of how many
    bytes changed (inside the view, and in the NaN memory around it)."""
    now = s.storage.view(torch.uint8)
    changed = torch.nonzero(now != before).reshape(-1)
    if not changed.numel():
        return None
    mask = torch.zeros(s.storage.numel(), dtype=torch.bool, device=s.storage.device)
    base = s.storage.storage_offset()
    mask.as_strided(tuple(s.view.shape), s.view.stride(), s.view.storage_offset() - base).fill_(True)
    elem = changed // s.storage.element_size()
    inside = int(mask[elem].sum())
    return (f"{changed.numel()} bytes of its input's storage changed ({inside} inside the view, "
            f"{changed.numel() - inside} in the memory around it)")
