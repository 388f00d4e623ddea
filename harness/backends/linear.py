"""Linear-level backends: a serving engine's NVFP4 linear layer built on a GEMM backend.

Each one does what vLLM / SGLang do around the kernel: activation quantization (dynamic, or with
the checkpoint's static ``input_scale`` as their ModelOpt NVFP4 linear methods do), padding to
the kernel's alignment under a production :class:`~harness.pipeline.PaddingPolicy`, swizzle, GEMM,
slice back to the logical N, bias after the slice.  This is where the real padding bugs live
(NVFP4-NOTES.md bug classes 2-6, 9).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch

from harness.backends import registry
from harness.backends.protocol import GemmBackend, LinearBackend, Requirements
from harness.format import BLOCK_SIZE, gemm_alpha
from harness.layouts import ScaleLayout, round_up
from harness.pipeline import (
    POLICIES,
    CheckpointWeight,
    GemmOperands,
    MergedCheckpoint,
    PaddingPolicy,
    QuantizedTensor,
    merge_partitions,
    pad_weight,
    quantize_activation,
)


@dataclass
class LoadedShard:
    """A checkpoint weight shard as an :class:`EngineLinear` keeps it: the shard and, per GEMM backend
    name, its padded and swizzled weight (:meth:`EngineLinear.prepare_weight`, made on first use)."""
    weight: CheckpointWeight
    prepared: dict[str, QuantizedTensor] = field(default_factory=dict)


class EngineLinear(LinearBackend):
    """``y = x @ W^T + b`` the way a serving engine runs it on ``gemm`` (and ``small_m_gemm`` for
    m <= policy.small_m_max when the policy switches layouts, as the TRT-LLM 8x4 path does)."""

    static_input_scale = True
    merged_partitions = True

    def __init__(self, policy: PaddingPolicy, gemm_name: str, small_m_gemm_name: str | None = None,
                 name: str | None = None) -> None:
        self.policy = policy
        self.gemm_name = gemm_name
        self.small_m_gemm_name = small_m_gemm_name
        suffix = gemm_name if small_m_gemm_name is None else f"{gemm_name}+{small_m_gemm_name}"
        self.name = name or f"linear-{policy.name}[{suffix}]"
        self.description = f"{policy.source}; GEMM: {suffix}"

    @property
    def gemm(self) -> GemmBackend:
        return registry.get(self.gemm_name)  # type: ignore[return-value]

    @property
    def small_m_gemm(self) -> GemmBackend | None:
        return registry.get(self.small_m_gemm_name) if self.small_m_gemm_name else None  # type: ignore[return-value]

    @property
    def requirements(self) -> Requirements:  # type: ignore[override]
        req = self.gemm.requirements
        return replace(req, m_max=None, n_align=max(req.n_align, self.policy.n_align),
                       k_align=max(req.k_align, self.policy.k_align))

    def support(self, env):
        s = self.gemm.support(env)
        if s and self.small_m_gemm is not None:
            s2 = self.small_m_gemm.support(env)
            if not s2:
                return s2
        return s

    def gemm_for(self, m: int) -> tuple[GemmBackend, ScaleLayout]:
        small = self.small_m_gemm
        if small is not None and m <= self.policy.small_m_max:
            return small, small.requirements.a_layouts[0]
        return self.gemm, self.gemm.requirements.a_layouts[0]

    # The steps are separate methods so that a planted-bug variant (harness.mutants) overrides one.
    def load_partition_scales(self, weight: MergedCheckpoint) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The weight loader's writes into the per-partition scale slots (vLLM / SGLang
        ``weight_loader_v2`` of ``MergedColumnParallelLinear`` and ``QKVParallelLinear`` for a
        ``PerTensorScaleParameter``): shard i's scalar into slot i; a fused-on-disk scalar
        (``loaded_shard_id`` None) into every slot, as SGLang PR #29151 does (vLLM issue #39764: the
        old loaders wrote slot 0 only).  Returns the slot buffers (fp32 [len(partitions)]), copies."""
        def fill(slots: torch.Tensor, values: list[torch.Tensor]) -> torch.Tensor:
            slots = slots.clone()
            if len(values) == 1:
                slots[:] = values[0].reshape(()).to(slots.device)
            else:
                for i, v in enumerate(values):
                    slots[i] = v.reshape(()).to(slots.device)
            return slots

        ws2 = fill(weight.weight_scale_2, [sh.weight_scale_2 for sh in weight.shards])
        ins = None if weight.input_scale is None else \
            fill(weight.input_scale, [sh.input_scale for sh in weight.shards])  # type: ignore[misc]
        return ws2, ins

    def merge_partitions(self, weight: MergedCheckpoint) -> CheckpointWeight:
        """Load, then ``process_weights_after_loading`` (:func:`harness.pipeline.merge_partitions`:
        the max over the slots, block scales requantized to it)."""
        ws2, ins = self.load_partition_scales(weight)
        return merge_partitions(weight, ws2, ins)

    def quantize_input(self, x2d: torch.Tensor, layout: ScaleLayout, k_alloc: int,
                       global_scale: torch.Tensor | None = None):
        """Activations quantized dynamically, or with the checkpoint's static scale ``global_scale``."""
        return quantize_activation(x2d, layout, k_alloc, global_scale=global_scale)

    def prepare_weight(self, weight: CheckpointWeight, gemm: GemmBackend):
        req = gemm.requirements
        pol = replace(self.policy, n_align=max(self.policy.n_align, req.n_align),
                      k_align=max(self.policy.k_align, req.k_align))
        return pad_weight(weight, pol, req.w_layout)

    def finish(self, out: torch.Tensor, n: int, bias: torch.Tensor | None) -> torch.Tensor:
        if self.policy.slice_output:
            out = out[:, :n]
        if bias is not None:
            out = out + bias.to(out.dtype)
        return out

    def output_shape(self, x: torch.Tensor, n: int) -> tuple[int, ...]:
        return (*x.shape[:-1], n)

    def run(self, x: torch.Tensor, weight: CheckpointWeight | MergedCheckpoint,
            bias: torch.Tensor | None = None) -> torch.Tensor:
        return self.forward(self.load(weight), x, bias)

    def load(self, weight: CheckpointWeight | MergedCheckpoint) -> "LoadedShard":
        """The shard with a place for its padded, swizzled weight per GEMM (prepared on first use); a
        merged-partition checkpoint is merged first (:meth:`merge_partitions`), as at load time."""
        if isinstance(weight, MergedCheckpoint):
            weight = self.merge_partitions(weight)
        return LoadedShard(weight)

    def forward(self, loaded: object, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        if not isinstance(loaded, LoadedShard):
            raise TypeError(f"{self.name}: forward takes what load() returned, got {type(loaded).__name__}")
        weight = loaded.weight
        k = x.shape[-1]
        if k != weight.k:
            raise ValueError(f"{self.name}: x has K={k} but the weight shard has K={weight.k}")
        if k % BLOCK_SIZE:
            raise ValueError(f"{self.name}: K={k} is not a multiple of {BLOCK_SIZE}")
        x2d = x.reshape(-1, k)
        m = x2d.shape[0]
        gemm, layout = self.gemm_for(m)
        w = loaded.prepared.get(gemm.name)
        if w is None:  # once per GEMM, as at load time: a captured call finds it prepared by the warm-up
            w = loaded.prepared[gemm.name] = self.prepare_weight(weight, gemm)
        k_alloc = w.k_alloc if self.policy.pad_activation_k else k
        if gemm.requirements.activation == "bf16":
            a_dense = torch.zeros((m, k_alloc), dtype=x.dtype, device=x.device)
            a_dense[:, :k] = x2d
            a = quantize_activation(x2d, layout, k_alloc)
            ops = GemmOperands(a, w, (1.0 / w.global_scale).to(torch.float32).reshape(1), x.dtype, a_dense=a_dense)
        else:
            a = self.quantize_input(x2d, layout, k_alloc, weight.input_global_scale)
            ops = GemmOperands(a, w, gemm_alpha(a.global_scale, w.global_scale).reshape(1), x.dtype)
        out = gemm.run(ops)
        out = self.finish(out, weight.n, bias)
        return out.reshape(self.output_shape(x, out.shape[-1]))


def backends() -> list[LinearBackend]:
    vllm, sglang, trt = POLICIES["vllm"], POLICIES["sglang"], POLICIES["sglang-trtllm"]
    return [
        # checkable end to end on any GPU and on the CPU
        EngineLinear(vllm, "triton-emu-128x4"),
        EngineLinear(sglang, "triton-emu-128x4"),
        EngineLinear(trt, "triton-emu-128x4", "triton-emu-8x4"),
        EngineLinear(vllm, "torch-emu"),
        EngineLinear(vllm, "triton-w4a16"),
        # the FP4 tensor-core paths serving engines take on Blackwell
        EngineLinear(vllm, "flashinfer-cutlass"),
        EngineLinear(sglang, "flashinfer-cudnn"),
        EngineLinear(trt, "flashinfer-trtllm", "flashinfer-trtllm-8x4"),
        EngineLinear(vllm, "torch-scaled-mm"),
    ]
