"""The harness's Triton kernels: the quantize-pad-swizzle pipeline, test data and the GEMMs.

Triton decides between compiling and interpreting when a kernel is defined, so the interpreter is
chosen here, before any kernel module of this package runs: on a machine without a CUDA GPU,
``TRITON_INTERPRET=1`` (unless the user set it already; :func:`harness.env.configure_triton_interpreter`).
"""

from harness.env import configure_triton_interpreter

configure_triton_interpreter()
