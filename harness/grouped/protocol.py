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
from harness.grouped.problem import GROUPED_PROPERTIES, MOE_PROPERTIES

if TYPE_CHECKING:  # pragma: no cover
    from harness.grouped.moe import MoeOperands
    from harness.grouped.pipeline import GroupedOperands, GroupedTensor


class GroupedBackend(Backend):
    """A grouped GEMM with routing weights (see the module docstring)."""

    level: ClassVar[str] = "grouped"  # type: ignore[assignment]
    kind: ClassVar[str] = "grouped"
    #: the properties the suite and the self-test put it to
    properties: ClassVar[tuple[str, ...]] = GROUPED_PROPERTIES
    #: whether the backend quantizes ``ops.hidden`` itself (and implements :meth:`quantize`)
    quantizes: ClassVar[bool] = False
    intermediate: torch.dtype = torch.float32

    def run(self, ops: "GroupedOperands") -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def quantize(self, ops: "GroupedOperands") -> "GroupedTensor":
        """The grouped activation buffer this backend builds from ``ops.hidden`` (quantizing backends)."""
        raise NotImplementedError(f"{self.name} does not quantize activations itself")


class MoeBackend(Backend):
    """A fused-MoE layer: FC1 (gate and up) -> SwiGLU -> NVFP4 requantize -> FC2 -> routed sum.

    :meth:`run` receives :class:`~harness.grouped.moe.MoeOperands` and returns ``[tokens, hidden]``
    in the problem's output dtype: ``out[t] = sum_j w_tj * alpha2_e * Q_e(silu(g) * u) @ W2_e^T`` with
    ``[g | u] = alpha1_e * Q(x_t) @ W13_e^T`` (the harness's gate-then-up order) and ``Q_e`` the NVFP4
    quantization with expert ``e``'s FC2 input scale.  What the backend rounds, for the error bound
    of :mod:`harness.grouped.moe_reference`:

    * ``requirements.precision``: both GEMMs (accumulator bits, exact products or not);
    * ``fc1_out``: the dtype FC1's result is rounded to before the activation;
    * ``activation_error``: ``(c0, c1)``: the relative error of evaluating ``silu(g) * u`` is at most
      ``c0 + c1 * |g|`` (``c1`` covers an exponential computed as ``ex2.approx(g * log2(e))``,
      whose argument rounding turns into an absolute error ``|g| * 2^-24`` in the exponent);
    * ``act_out``: the dtype the activation is rounded to before the FC2 input quantization;
    * ``fc1_scale_granularities``: the FC1 input-scale granularities it takes (``per_expert``, ``shared``);
    * ``bitwise_unfused``: its output equals the unfused composition of the grouped stages
      (:func:`harness.backends.moe_triton.unfused_moe`) bit for bit, not only within both bounds;
    * ``activation_quant``: True for NVFP4 x NVFP4 (W4A4: the hidden states and the intermediate are
      quantized to NVFP4); False for a weight-only kernel (W4A16, e.g. Marlin's FP4 MoE on SM80/SM90):
      it multiplies the hidden states as given and the intermediate as it rounded it (``act_out``),
      with each weight's decode scale ``1 / global scale`` (:func:`harness.grouped.moe.weight_decode_scales`)
      and no input scale;
    * the routed combine ``out[t] = sum_j w_tj * y_tj``: ``fc2_out``, the dtype FC2's result ``y`` is
      rounded to before the routing weight is applied; ``weight_dtype``, the dtype the routing
      weights are rounded to before the multiply; ``term_out``, the dtype each product ``w * y`` is
      rounded to; the top-k terms are then summed in fp32 and rounded once to the output dtype.  All
      fp32 by default (the emulation's combine); vLLM's and SGLang's CUTLASS paths compute
      ``c2 * topk_weights.to(bf16)`` in bf16, Marlin multiplies in its fp32 epilogue and stores bf16.
    """

    level: ClassVar[str] = "grouped"  # type: ignore[assignment]
    kind: ClassVar[str] = "moe"
    properties: ClassVar[tuple[str, ...]] = MOE_PROPERTIES
    quantizes: ClassVar[bool] = True
    fc1_out: torch.dtype = torch.float32
    act_out: torch.dtype = torch.float32
    activation_error: tuple[float, float] = (2.0 ** -21, 0.0)
    fc1_scale_granularities: tuple[str, ...] = ("per_expert", "shared")
    bitwise_unfused: bool = False
    activation_quant: bool = True
    fc2_out: torch.dtype = torch.float32
    weight_dtype: torch.dtype = torch.float32
    term_out: torch.dtype = torch.float32

    def run(self, ops: "MoeOperands") -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError
