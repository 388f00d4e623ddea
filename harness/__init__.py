"""nvfp4-harness: correctness fuzzing and regression harness for NVFP4 GEMM backends.

Data flows one way: format -> layouts -> pipeline (Triton kernels) -> backends -> oracle
(reference and error bound) -> checks (properties) -> cases / replay -> report.
"""

from harness.env import configure_triton_interpreter

configure_triton_interpreter()

__version__ = "0.1.0"
