"""nvfp4-harness: correctness fuzzing and regression harness for NVFP4 GEMM backends.

Data flows one way: format -> layouts -> problem/trial (the data model) -> kernels -> pipeline ->
backends -> oracle (reference and error bound) -> checks (properties) -> runner -> results / cases
-> report.  Importing this package imports nothing else (not torch); the Triton interpreter is
chosen where the kernels are imported (:mod:`harness.kernels`).
"""

__version__ = "0.1.0"
