"""Scale-factor layouts as data: byte offsets, padded shapes, (un)swizzle and padding maps.

Notation: r = row, kb = k-block index, Kb = ceil(K/16) k-blocks, nK = ceil(Kb/4) groups of 4.

* LINEAR          [rows, Kb] row-major, no padding of its own.
* SWIZZLED_128x4  rows padded to 128, k-blocks to 4.  Byte offset
                  (r//128)*nK*512 + (kb//4)*512 + (r%32)*16 + ((r%128)//32)*4 + kb%4
                  (the cuBLAS / CUTLASS block-scaled layout; torchao ``to_blocked`` produces it).
* SWIZZLED_8x4    rows padded to 8, k-blocks to 4.  Byte offset
                  (r//8)*nK*32 + (kb//4)*32 + (r%8)*4 + kb%4
                  (TRT-LLM's small-m activation layout, FlashInfer ``use_8x4_sf_layout``).

A scale buffer is stored as a 2-D uint8 tensor [padded_rows, padded_kblocks] whose flat bytes
follow the layout's offsets, which is the shape FlashInfer's quantizers return.

Padding regions.  Rows at or beyond the real row count are *row padding*: M padding on the
activation side, N padding on the weight side.  K-blocks at or beyond the real k-block count are the
*K tail*.  A byte that is both (a padding row's tail) belongs to the row padding: it only ever
feeds padding outputs.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

import torch


class ScaleLayout(str, enum.Enum):
    LINEAR = "linear"
    SWIZZLED_128x4 = "128x4"
    SWIZZLED_8x4 = "8x4"

    @property
    def row_tile(self) -> int:
        return {ScaleLayout.LINEAR: 1, ScaleLayout.SWIZZLED_128x4: 128, ScaleLayout.SWIZZLED_8x4: 8}[self]

    @property
    def kblock_tile(self) -> int:
        return 1 if self is ScaleLayout.LINEAR else 4

    @classmethod
    def parse(cls, value: "str | ScaleLayout") -> "ScaleLayout":
        try:
            return cls(value)
        except ValueError:
            raise ValueError(f"unknown scale layout {value!r}; expected one of "
                             f"{[m.value for m in cls]}") from None


class Region(enum.IntEnum):
    """What a scale byte (or an output element) belongs to."""
    REAL = 0
    M_PAD = 1
    N_PAD = 2
    K_TAIL = 3


class OperandRole(str, enum.Enum):
    ACTIVATION = "activation"  # rows are M
    WEIGHT = "weight"          # rows are N

    @property
    def row_region(self) -> Region:
        return Region.M_PAD if self is OperandRole.ACTIVATION else Region.N_PAD


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def round_up(a: int, b: int) -> int:
    return ceil_div(a, b) * b


def padded_shape(layout: ScaleLayout, rows: int, kblocks: int) -> tuple[int, int]:
    """Shape [padded_rows, padded_kblocks] of a scale buffer holding rows x kblocks scales."""
    layout = ScaleLayout.parse(layout)
    return round_up(rows, layout.row_tile), round_up(kblocks, layout.kblock_tile)


def offsets(layout: ScaleLayout, r: torch.Tensor, kb: torch.Tensor, padded_kblocks: int) -> torch.Tensor:
    """Byte offsets of scales (r, kb) in a buffer of the layout with ``padded_kblocks`` columns."""
    layout = ScaleLayout.parse(layout)
    if layout is ScaleLayout.LINEAR:
        return r * padded_kblocks + kb
    nk = padded_kblocks // 4
    if layout is ScaleLayout.SWIZZLED_128x4:
        return (r // 128) * nk * 512 + (kb // 4) * 512 + (r % 32) * 16 + ((r % 128) // 32) * 4 + kb % 4
    return (r // 8) * nk * 32 + (kb // 4) * 32 + (r % 8) * 4 + kb % 4


def offset_grid(layout: ScaleLayout, padded_rows: int, padded_kblocks: int,
                device: torch.device | str = "cpu") -> torch.Tensor:
    """[padded_rows, padded_kblocks] int64 tensor: the flat offset of each logical (r, kb)."""
    r = torch.arange(padded_rows, device=device).unsqueeze(1)
    kb = torch.arange(padded_kblocks, device=device).unsqueeze(0)
    return offsets(layout, r, kb, padded_kblocks)


def swizzle(linear: torch.Tensor, layout: ScaleLayout, fill: int = 0) -> torch.Tensor:
    """Lay out logical scales [rows, Kb] (uint8) into a buffer of ``layout``; padding = ``fill``."""
    rows, kbs = linear.shape
    pr, pk = padded_shape(layout, rows, kbs)
    logical = torch.full((pr, pk), fill, dtype=torch.uint8, device=linear.device)
    logical[:rows, :kbs] = linear.to(torch.uint8)
    flat = torch.empty(pr * pk, dtype=torch.uint8, device=linear.device)
    flat[offset_grid(layout, pr, pk, linear.device).reshape(-1)] = logical.reshape(-1)
    return flat.reshape(pr, pk)


def unswizzle(buffer: torch.Tensor, layout: ScaleLayout) -> torch.Tensor:
    """Inverse of :func:`swizzle`: logical [padded_rows, padded_kblocks], padding included."""
    pr, pk = buffer.shape
    flat = buffer.reshape(-1)
    return flat[offset_grid(layout, pr, pk, buffer.device).reshape(-1)].reshape(pr, pk)


def real_scales(buffer: torch.Tensor, layout: ScaleLayout, rows: int, kblocks: int) -> torch.Tensor:
    """The logical scales [rows, kblocks] of the real region of a ``layout`` buffer, gathered from
    their offsets alone: unlike ``unswizzle(buffer)[:rows, :kblocks]`` no padding byte is read (a
    read that compute-sanitizer's initcheck reports when the padding was never written)."""
    r = torch.arange(rows, device=buffer.device).unsqueeze(1)
    kb = torch.arange(kblocks, device=buffer.device).unsqueeze(0)
    return buffer.reshape(-1)[offsets(layout, r, kb, buffer.shape[1])]


@dataclass(frozen=True)
class PaddingMap:
    """Region of every byte of a scale buffer, in *storage* order (the buffer's own shape)."""
    layout: ScaleLayout
    role: OperandRole
    real_rows: int
    real_kblocks: int
    regions: torch.Tensor  # int8 [padded_rows, padded_kblocks], storage order

    def count(self, region: Region) -> int:
        return int((self.regions == int(region)).sum())

    def mask(self, region: Region) -> torch.Tensor:
        return self.regions == int(region)


def padding_map(layout: ScaleLayout, role: OperandRole, real_rows: int, real_kblocks: int,
                rows: int | None = None, kblocks: int | None = None) -> PaddingMap:
    """The analytic padding map.

    ``rows``/``kblocks`` are the stored (already data-padded) counts before the layout's own
    padding; they default to the real counts.  Rows >= real_rows are row padding (M or N by
    ``role``); k-blocks >= real_kblocks of real rows are the K tail.
    """
    layout = ScaleLayout.parse(layout)
    rows = real_rows if rows is None else rows
    kblocks = real_kblocks if kblocks is None else kblocks
    pr, pk = padded_shape(layout, rows, kblocks)
    logical = torch.full((pr, pk), int(Region.REAL), dtype=torch.int8)
    logical[:, real_kblocks:] = int(Region.K_TAIL)
    logical[real_rows:, :] = int(role.row_region)
    storage = torch.empty(pr * pk, dtype=torch.int8)
    storage[offset_grid(layout, pr, pk).reshape(-1)] = logical.reshape(-1)
    return PaddingMap(layout, role, real_rows, real_kblocks, storage.reshape(pr, pk))
