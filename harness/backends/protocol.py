"""The backend protocol: what every GEMM, linear-layer and quantizer backend declares and does.

Three levels, one small abstract class each:

* :class:`GemmBackend` receives the pipeline's operands (packed A and W, scales in the layouts it
  declared, alpha, output dtype, optional preallocated output) and returns ``[m, n_alloc]``.
* :class:`LinearBackend` receives activations of any leading shape plus an NVFP4 checkpoint weight
  shard and does what a serving engine does (quantize, pad, swizzle, GEMM, slice, bias).
* :class:`QuantizerBackend` turns a high-precision matrix into packed codes and a scale buffer.
* :class:`CheckpointBackend` exports a dense weight (and a calibrated activation amax) as a
  checkpoint in one library's convention and loads it back the way a serving engine interprets
  that convention, into a :class:`LoadedLinear`.

A backend declares its needs as :class:`Requirements`; :meth:`Backend.support` turns them and the
:class:`~harness.env.Environment` into a :class:`Support` verdict with a reason a person can act on.
Adapters raise :class:`Unsupported` for a capability refusal they can only see at call time.
"""

from __future__ import annotations

import abc
import importlib.util
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar, Literal

import torch

from harness.layouts import ScaleLayout
from harness.oracle import Precision

if TYPE_CHECKING:  # pragma: no cover
    from harness.env import Environment
    from harness.pipeline import CheckpointWeight, GemmOperands, MergedCheckpoint

Level = Literal["gemm", "linear", "quantizer", "checkpoint"]


class Unsupported(Exception):
    """The backend cannot run this call here (capability, package, shape outside its support).

    Raised by adapters; the harness records it as a skip with this message, never as a pass.
    """


class BackendContractError(Exception):
    """A backend broke the protocol (wrong output shape or dtype, wrong buffer sizes)."""


@dataclass(frozen=True)
class Requirements:
    """Declared support of a backend. Everything here is checked before a call is made."""
    compute_capabilities: frozenset[int] | None = None  # None: any CUDA GPU (or none, see runs_on_cpu)
    runs_on_cpu: bool = False                            # Triton interpreter / torch CPU
    packages: tuple[str, ...] = ()                       # import names that must be importable
    a_layouts: tuple[ScaleLayout, ...] = (ScaleLayout.SWIZZLED_128x4,)
    w_layout: ScaleLayout = ScaleLayout.SWIZZLED_128x4
    n_align: int = 1                                     # the weight's N is padded to this
    k_align: int = 16                                    # K (both operands) is padded to this
    out_dtypes: tuple[torch.dtype, ...] = (torch.bfloat16, torch.float16)
    # input dtypes a quantizer accepts (the property suite draws only these)
    in_dtypes: tuple[torch.dtype, ...] = (torch.bfloat16, torch.float16, torch.float32)
    m_max: int | None = None
    m_align: int = 1
    shuffled_weight: bool = False                        # TRT-LLM shuffle_matrix_a / _sf_a
    activation: Literal["nvfp4", "bf16"] = "nvfp4"       # W4A16 backends take dense activations
    # Column-parallel TP shards reproduce the unsplit GEMM bit for bit: true for a fixed tiling
    # whose per-column arithmetic does not depend on N; library GEMMs that pick kernels by shape
    # (cuBLAS, autotuned CUTLASS) only promise agreement within the error bound.
    column_bitwise: bool = False
    # The call can be captured in a CUDA graph and replayed (no host synchronisation, no host-to-device
    # copy from pageable memory, no shape decided from data), as serving engines run decode.  False
    # declares it cannot: the graph_replay property is then a skip that names this field, never a pass.
    cuda_graphs: bool = True
    precision: Precision = field(default_factory=Precision)


@dataclass(frozen=True)
class Support:
    ok: bool
    reason: str = ""

    def __bool__(self) -> bool:
        return self.ok


class Backend(abc.ABC):
    """Common part of all backends: a name, a description and declared requirements."""

    level: ClassVar[Level]
    name: str
    description: str = ""
    requirements: Requirements = Requirements()
    #: True for a backend whose bugs are planted on purpose (harness.mutants); hidden by default.
    mutant: ClassVar[bool] = False

    def support(self, env: "Environment") -> Support:
        """Whether this backend can run in ``env``; the reason names what is missing."""
        req = self.requirements
        for pkg in req.packages:
            if importlib.util.find_spec(pkg) is None:
                from harness.optional import INSTALL_HINT

                hint = INSTALL_HINT.get(pkg)
                return Support(False, f"package {pkg!r} is not installed" + (f": {hint}" if hint else ""))
        if env.device == "cpu":
            if not req.runs_on_cpu:
                return Support(False, "needs a CUDA GPU; this machine has none")
            return Support(True, "runs on the CPU (Triton interpreter / torch)")
        if req.compute_capabilities is not None and env.compute_capability not in req.compute_capabilities:
            need = ", ".join(f"SM{c}" for c in sorted(req.compute_capabilities))
            return Support(False, f"needs {need}; this GPU ({env.gpu_name}) is SM{env.compute_capability}")
        return Support(True, f"runs on {env.gpu_name} (SM{env.compute_capability})")

    def shape_support(self, m: int, n: int, k: int, out_dtype: torch.dtype) -> Support:
        """Whether a logical problem is inside the declared support (after the pipeline's padding)."""
        req = self.requirements
        if out_dtype not in req.out_dtypes:
            return Support(False, f"output dtype {out_dtype} not in {list(req.out_dtypes)}")
        if req.m_max is not None and m > req.m_max:
            return Support(False, f"m={m} exceeds the backend's m limit {req.m_max}")
        return Support(True)

    def describe(self) -> dict:
        req = self.requirements
        return {
            "name": self.name,
            "level": self.level,
            "description": self.description,
            "a_layouts": [lay.value for lay in req.a_layouts],
            "w_layout": req.w_layout.value,
            "n_align": req.n_align,
            "k_align": req.k_align,
            "m_max": req.m_max,
            "out_dtypes": [str(d).replace("torch.", "") for d in req.out_dtypes],
            "in_dtypes": [str(d).replace("torch.", "") for d in req.in_dtypes],
            "compute_capabilities": sorted(req.compute_capabilities) if req.compute_capabilities else None,
            "packages": list(req.packages),
            "activation": req.activation,
            "cuda_graphs": req.cuda_graphs,
            "mutant": self.mutant,
        }


class GemmBackend(Backend):
    level: ClassVar[Level] = "gemm"

    def check_operands(self, ops: "GemmOperands", out: torch.Tensor | None = None, *,
                       check_out_dtype: bool = True) -> None:
        """Raise ValueError, naming what differs, when ``ops`` (and ``out``) break what this backend
        declared: activation kind, scale layouts, one K allocation for both operands, output dtype
        (unless an adapter leaves that refusal to its library), output buffer [m, n_alloc] of that
        dtype on the operands' device."""
        req = self.requirements
        a, w = ops.a, ops.w
        if req.activation == "nvfp4" and ops.a_dense is not None:
            raise ValueError(f"{self.name}: operands carry dense (W4A16) activations; this backend takes NVFP4 "
                             f"activations")
        if a.layout not in req.a_layouts:
            raise ValueError(f"{self.name}: activation scales are in layout {a.layout.value!r}; this backend reads "
                             f"{[x.value for x in req.a_layouts]}")
        if w.layout is not req.w_layout:
            raise ValueError(f"{self.name}: weight scales are in layout {w.layout.value!r}; expected "
                             f"{req.w_layout.value!r}")
        if a.k_alloc != w.k_alloc:
            raise ValueError(f"{self.name}: activation K ({a.k_alloc}) and weight K ({w.k_alloc}) allocations differ")
        if check_out_dtype and ops.out_dtype not in req.out_dtypes:
            raise ValueError(f"{self.name}: out_dtype={ops.out_dtype} not in {list(req.out_dtypes)}")
        if out is not None:
            want, dev = (ops.m, w.rows_alloc), a.packed.device
            if tuple(out.shape) != want or out.dtype != ops.out_dtype or out.device != dev:
                raise ValueError(f"{self.name}: out buffer is {tuple(out.shape)} {out.dtype} on {out.device}; "
                                 f"expected {want} {ops.out_dtype} on {dev}")

    @abc.abstractmethod
    def run(self, ops: "GemmOperands", out: torch.Tensor | None = None) -> torch.Tensor:
        """Compute ``alpha * A @ W^T`` over the padded operands.

        Returns a tensor ``[ops.m, ops.w.rows_alloc]`` of ``ops.out_dtype`` (the harness slices the
        logical N).  When ``out`` is given the backend must write into it and return it.
        """


class LinearBackend(Backend):
    level: ClassVar[Level] = "linear"
    #: the layer quantizes activations with the checkpoint's static ``weight.input_scale`` when it has
    #: one (vLLM's / SGLang's ModelOpt NVFP4 linear methods); a layer that always scales dynamically
    #: leaves it False and is not run on calibrated problems (``GemmProblem.calibration``)
    static_input_scale: ClassVar[bool] = False
    #: the layer loads merged-partition weights (QKV, gate/up: a
    #: :class:`~harness.pipeline.MergedCheckpoint` as ``weight``) through :meth:`merge_partitions`; a
    #: layer that does not leaves it False and is not run on merged problems (``GemmProblem.partitions``)
    merged_partitions: ClassVar[bool] = False

    @abc.abstractmethod
    def run(self, x: torch.Tensor, weight: "CheckpointWeight", bias: torch.Tensor | None = None) -> torch.Tensor:
        """``y = x @ dequant(weight)^T + bias`` for x of shape [..., k]; returns [..., n].  With
        ``merged_partitions``, ``weight`` may be a :class:`~harness.pipeline.MergedCheckpoint`."""

    def merge_partitions(self, weight: "MergedCheckpoint") -> "CheckpointWeight":
        """The layer's loading of a merged-partition checkpoint: its weight loader's writes into the
        per-partition scale slots, then ``process_weights_after_loading``; returns the one weight it
        multiplies with (fp32 [1] ``weight_scale_2`` and ``input_scale``).  Only with ``merged_partitions``."""
        raise NotImplementedError(f"{self.name} does not load merged-partition weights")

    def load(self, weight: "CheckpointWeight") -> object:
        """What the layer keeps of a checkpoint weight shard after loading (a serving engine's
        ``process_weights_after_loading``: padding, swizzle); handed to :meth:`forward`.  The default
        keeps the shard as it is and leaves everything to :meth:`run`.  With ``merged_partitions``,
        ``weight`` may be a :class:`~harness.pipeline.MergedCheckpoint` (merged here, as at load time)."""
        return weight

    def forward(self, loaded: object, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        """The per-call part of :meth:`run` on a weight :meth:`load` prepared: the part a serving
        engine captures in a CUDA graph (the ``graph_replay`` property captures this call).  The
        default calls :meth:`run`."""
        return self.run(x, loaded, bias)  # type: ignore[arg-type]


class QuantizerBackend(Backend):
    level: ClassVar[Level] = "quantizer"
    layout: ScaleLayout = ScaleLayout.SWIZZLED_128x4
    #: padding regions of the scale buffer (``"m_pad"``: rows past the real rows; ``"k_tail"``:
    #: k-blocks past K of real rows) and ``"data"`` (packed bytes past [rows, k/2]) this quantizer
    #: declares it leaves unwritten; every other padding byte must be zero (the padding contract:
    #: vLLM's fix for #37563 zeroes them, because TRT-LLM's 8x4 GEMM path reads them)
    leaves_padding: ClassVar[tuple[str, ...]] = ()

    @abc.abstractmethod
    def quantize(self, x: torch.Tensor, global_scale: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Quantize x [rows, k] with the encode-divisor global scale (fp32 scalar tensor).

        Returns (packed [rows, k/2] uint8, scale buffer uint8 [padded_rows, padded_kblocks] in
        ``self.layout``'s byte order).
        """


@dataclass
class LoadedLinear:
    """An NVFP4 linear layer's weight state after a serving engine's loader processed a checkpoint.

    packed: uint8 [n, k/2], the LOW nibble holding the even element (the order the GEMM kernels
      read); scales: uint8 [n, k/16] e4m3 block-scale bytes, linear layout;
    weight_decode: fp32 [1], what the layer multiplies ``code * block_scale`` by to get the weight
      (ModelOpt ``weight_scale_2``; compressed-tensors ``1 / weight_global_scale``);
    input_encode: fp32 [1], the encode divisor the layer quantizes activations with (vLLM's
      ``input_scale_inv`` / ``input_global_scale_inv``);
    alpha: fp32 [1], the factor the GEMM applies to its block-scaled sum.
    """
    packed: torch.Tensor
    scales: torch.Tensor
    weight_decode: torch.Tensor
    input_encode: torch.Tensor
    alpha: torch.Tensor

    def dequantize(self) -> torch.Tensor:
        """The weight [n, k] in fp64: e2m1(code) * e4m3(scale) * weight_decode."""
        from harness.format import reference_dequantize, unpack_e2m1

        return reference_dequantize(unpack_e2m1(self.packed), self.scales) * \
            self.weight_decode.double().reshape(()).to(self.packed.device)


class CheckpointBackend(Backend):
    """A checkpoint convention: one library's writer plus the matching serving-engine loader."""

    level: ClassVar[Level] = "checkpoint"
    #: documented design differences of the writer's quantizer (names of harness.checks.DESIGN_DIFFERENCES)
    known_differences: tuple[str, ...] = ()

    @abc.abstractmethod
    def export(self, weight: torch.Tensor, input_amax: torch.Tensor) -> dict[str, torch.Tensor]:
        """The checkpoint tensors of a dense weight [n, k] (k a multiple of 16) whose activations
        were calibrated to ``input_amax`` (fp32 scalar), named as the library writes them."""

    @abc.abstractmethod
    def load(self, tensors: dict[str, torch.Tensor]) -> LoadedLinear:
        """Interpret checkpoint tensors the way the serving engine's linear method does."""
