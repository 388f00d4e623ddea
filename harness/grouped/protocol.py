"""What a grouped (MoE) backend declares and does.

A :class:`GroupedBackend` receives :class:`~harness.grouped.pipeline.GroupedOperands` and returns
the routed output ``[tokens, n]`` (or ``[tokens, n_alloc]``; the harness reads the first ``n``
columns) in the problem's output dtype: ``out[t] = sum_j w_tj * alpha_e * A_t @ W_e^T`` over the
token's top-k experts ``e = topk_ids[t][j]``.  A backend that quantizes the activations itself
(``quantizes = True``) also implements :meth:`GroupedBackend.quantize`, returning the grouped buffer
it builds (checked byte for byte by the ``grouped_bytes`` property).  ``intermediate`` is the dtype
of the per-expert GEMM results before the routing weights are applied (for the error bound of
:mod:`harness.grouped.reference`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

import torch

from harness.backends.protocol import Backend

if TYPE_CHECKING:  # pragma: no cover
    from harness.grouped.pipeline import GroupedOperands, GroupedTensor


class GroupedBackend(Backend):
    """A grouped GEMM with routing weights (see the module docstring)."""

    level: ClassVar[str] = "grouped"  # type: ignore[assignment]
    #: whether the backend quantizes ``ops.hidden`` itself (and implements :meth:`quantize`)
    quantizes: ClassVar[bool] = False
    intermediate: torch.dtype = torch.float32

    def run(self, ops: "GroupedOperands") -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def quantize(self, ops: "GroupedOperands") -> "GroupedTensor":
        """The grouped activation buffer this backend builds from ``ops.hidden`` (quantizing backends)."""
        raise NotImplementedError(f"{self.name} does not quantize activations itself")
