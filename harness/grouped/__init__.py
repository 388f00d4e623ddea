"""The grouped (mixture-of-experts) level: grouped NVFP4 quantize and grouped GEMMs with routing.

A mixture-of-experts layer runs NVFP4 through grouped kernels: one activation tensor split into
per-expert sections (some empty), per-expert global scales, per-expert scale tiles padded inside
one swizzled buffer, and the routing weights applied before the top-k outputs of a token are summed.
The modules follow the GEMM level's data flow:

* :mod:`harness.grouped.problem`   the problem, poison and trial model (plain, serialisable data);
* :mod:`harness.grouped.pipeline`  grouped quantization into one buffer, per-expert weights, operands;
* :mod:`harness.grouped.reference` the exact fp64 reference with routing weights and its error bound;
* :mod:`harness.grouped.protocol`  what a grouped backend declares and does;
* :mod:`harness.grouped.checks`    the grouped properties and the engine that runs one trial;
* :mod:`harness.grouped.strategies` Hypothesis strategies (shrink to one expert and one token);
* :mod:`harness.grouped.cases`     grouped case files that replay bit for bit (``nvfp4-harness replay``);
* :mod:`harness.grouped.records`   the per-expert view of a grouped failure, kept in its result
  record and case file and drawn by the report;
* :mod:`harness.grouped.mutants`   planted-bug grouped backends (public bug classes), hunted by
  :func:`harness.selftest.hunt` like every mutant;
* :mod:`harness.grouped.transforms` columnwise casts, the random Hadamard transform, stochastic rounding;
* :mod:`harness.grouped.moe`       the fused-MoE layer's operands (FC1 gate/up and FC2 weights, static
  per-expert FC2 input scales);
* :mod:`harness.grouped.moe_reference` its exact reference (FC1 -> SwiGLU -> requantize -> FC2 ->
  routed sum) and the derived bound that admits exactly the requantization steps a correct backend
  may take.

Backends: :mod:`harness.backends.grouped_triton` (Triton emulation, GPU and CPU interpreter);
:mod:`harness.backends.te_grouped` (TransformerEngine's ``split_quantize`` into the grouped buffer,
then the Triton grouped GEMM; where TE's own ``is_nvfp4_available`` holds);
fused MoE: :mod:`harness.backends.moe_triton` (Triton emulation) and
:mod:`harness.backends.flashinfer_moe` (FlashInfer ``cutlass_fused_moe`` and
``trtllm_fp4_block_scale_routed_moe``, Blackwell only).
"""
