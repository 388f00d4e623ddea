"""``triton-dot-scaled``: NVFP4 GEMM on Triton's ``tl.dot_scaled`` (e2m1 x e2m1, e4m3 scales, group 16).

The kernel (:func:`harness.kernels.gemm.dot_scaled_gemm`) reads the pipeline's buffers as they are:

* packed codes of A [m, k_alloc/2] and W [n_alloc, k_alloc/2] (uint8; ``tl.dot_scaled`` takes fp4
  "packed into uint8 inputs with the first element in lower bits", our nibble order), W loaded as a
  [BLOCK_K/2, BLOCK_N] tile (packed along K, ``rhs_k_pack=True``);
* scale bytes at their layout's byte offsets (:func:`harness.kernels.nvfp4.scale_offset`), so the
  128x4 (or 8x4 / linear) buffers are unswizzled in the kernel, into [BLOCK_M, BLOCK_K/16] and
  [BLOCK_N, BLOCK_K/16] tiles (the rhs scale is NOT transposed, per ``tl.dot_scaled``'s docstring),
  bitcast to ``tl.float8e4nv``, which makes ``dot_scaled`` use NVFP4's group of 16;
* it accumulates over the whole allocated K (K-tail scales included, like hardware), multiplies the
  fp32 accumulator by alpha and stores rows < m, columns < n_alloc in the output dtype.

Where it runs:

* SM100+: native block-scaled MMA (exact products, fp32 accumulation);
* SM90: Triton 3.6 fails inside the compiler (an MLIR pass error in TritonGPUAccelerateMatmul) instead
  of emulating; :meth:`TritonDotScaled.run` compiles first and turns that into
  :class:`~harness.backends.protocol.Unsupported` with the compiler's first line;
* CPU (``TRITON_INTERPRET=1``): the kernel runs, but Triton 3.9's interpreter decodes every scale
  byte as e8m0, ``2**(byte - 127)``, whatever its dtype (``triton/runtime/interpreter.py``
  ``_dot_scaled_scale_to_f32``), so e4m3 scales give results off by about 2**-130; the backend
  declares ``runs_on_cpu=False`` and :meth:`TritonDotScaled.support` says why.  The tests run the
  kernel under the interpreter against that e8m0 reading to check the rest of its plumbing.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from collections.abc import Iterator
from typing import TYPE_CHECKING

import torch
import triton
import triton.language as tl

from harness.backends.protocol import GemmBackend, Precision, Requirements, Support, Unsupported
from harness.kernels.gemm import dot_scaled_gemm
from harness.layouts import ScaleLayout

if TYPE_CHECKING:  # pragma: no cover
    from harness.env import Environment
    from harness.pipeline import GemmOperands

NATIVE_CC = 100
"""First compute capability with block-scaled MMA for e2m1 x e2m1 with e4m3 scales (Blackwell)."""

INTERPRETER_REASON = (
    "the Triton interpreter (TRITON_INTERPRET=1, triton {ver}) decodes tl.dot_scaled scale bytes as e8m0 "
    "(2**(byte-127)) even for float8e4nv scales (triton/runtime/interpreter.py _dot_scaled_scale_to_f32), "
    "so NVFP4's e4m3 scales give wrong results on the CPU; needs a CUDA GPU (native on SM100+)")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    line = next((ln.strip() for ln in text.splitlines() if ln.strip()), "")
    return f"{type(exc).__name__}: {line}" if line else type(exc).__name__


@contextlib.contextmanager
def captured_stderr_fd(box: dict) -> Iterator[dict]:
    """Capture what C++ code writes to file descriptor 2 (Triton's MLIR diagnostics go there, not
    into the exception) into ``box["text"]``, filled in on exit."""
    box["text"] = ""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield box
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            box["text"] = tmp.read().decode(errors="replace")


def mlir_failure_summary(diagnostics: str) -> str:
    """The line naming the failing pass in an MLIR pipeline dump ("" if there is none)."""
    for line in diagnostics.splitlines():
        if "Pipeline failed while executing" in line:
            text = line.split("note:", 1)[-1].strip()
            return text.split(": reproducer generated", 1)[0].strip()
    return ""


def _reemit(text: str) -> None:
    if text:
        sys.stderr.write(text)
        sys.stderr.flush()


_COMPILE_REFUSALS: dict[tuple, str] = {}
"""Compile failures already seen in this process, by (cc, layouts, out dtype): not retried."""


class TritonDotScaled(GemmBackend):
    name = "triton-dot-scaled"
    description = ("Triton tl.dot_scaled(a, sa, 'e2m1', w, sw, 'e2m1') with e4m3 scales (NVFP4, group 16); reads "
                   "128x4 / 8x4 / linear scale buffers in the kernel; native block-scaled MMA on SM100+")
    requirements = Requirements(
        compute_capabilities=None,  # Triton promises emulation where there is no native support; see run()
        runs_on_cpu=False,          # see INTERPRETER_REASON
        packages=("triton",),
        a_layouts=(ScaleLayout.SWIZZLED_128x4, ScaleLayout.LINEAR, ScaleLayout.SWIZZLED_8x4),
        w_layout=ScaleLayout.SWIZZLED_128x4,
        # the kernel masks rows >= n_alloc and K beyond k_alloc, so any multiple of 16 works; N is
        # padded to 16 to give the harness an N-padding region as the tensor-core backends do.
        n_align=16, k_align=16,
        out_dtypes=(torch.bfloat16, torch.float16, torch.float32),
        precision=Precision(accumulator_bits=24, operand_bits=None),
    )

    def support(self, env: "Environment") -> Support:
        if env.device != "cuda" or env.compute_capability is None:
            return Support(False, INTERPRETER_REASON.format(ver=triton.__version__))
        cc = env.compute_capability
        if cc < NATIVE_CC:
            return Support(True, f"SM{cc} ({env.gpu_name}) has no native block-scaled MMA; Triton {triton.__version__} "
                                 f"promises an emulation (a compile failure at call time is reported as unsupported, "
                                 f"with the compiler's message)")
        return Support(True, f"native block-scaled MMA on {env.gpu_name} (SM{cc}), Triton {triton.__version__}")

    def _check(self, ops: "GemmOperands", out: torch.Tensor | None) -> torch.Tensor:
        self.check_operands(ops, out)
        a, w = ops.a, ops.w
        dev = a.packed.device
        want = (ops.m, w.rows_alloc)
        if out is None:
            return torch.empty(want, dtype=ops.out_dtype, device=dev)
        if tuple(out.shape) != want or out.dtype != ops.out_dtype or out.device != dev or out.stride(1) != 1:
            raise ValueError(f"{self.name}: out buffer is {tuple(out.shape)} {out.dtype} on {out.device} with strides "
                             f"{tuple(out.stride())}; expected {want} {ops.out_dtype} on {dev}, unit column stride")
        return out

    def run(self, ops: "GemmOperands", out: torch.Tensor | None = None) -> torch.Tensor:
        res = self._check(ops, out)
        if res.device.type != "cuda":
            raise Unsupported(f"{self.name}: {INTERPRETER_REASON.format(ver=triton.__version__)}")
        cc_major, cc_minor = torch.cuda.get_device_capability(res.device)
        cc = cc_major * 10 + cc_minor
        key = (cc, ops.a.layout, ops.w.layout, ops.out_dtype)
        if key in _COMPILE_REFUSALS:
            raise Unsupported(_COMPILE_REFUSALS[key])
        diag: dict = {"text": ""}
        try:
            with captured_stderr_fd(diag):
                dot_scaled_gemm(ops, res, compile_only=True)
        except Exception as exc:
            if cc < NATIVE_CC:
                detail = mlir_failure_summary(diag["text"])
                msg = (f"triton tl.dot_scaled with e2m1 x e2m1 and e4m3 scales failed to compile on SM{cc}: "
                       f"{_first_line(exc)}" + (f" ({detail})" if detail else ""))
                _COMPILE_REFUSALS[key] = msg
                raise Unsupported(msg) from exc
            _reemit(diag["text"])
            raise
        _reemit(diag["text"])
        dot_scaled_gemm(ops, res)
        return res


def backends() -> list[TritonDotScaled]:
    return [TritonDotScaled()]
