"""A second oracle: NVIDIA compute-sanitizer over the harness's cases.

Poisoned padding catches a read of padding only when the poison changes the result.  This package
re-runs cases in a child process under ``compute-sanitizer`` (``memcheck``: out-of-bounds and
misaligned accesses; ``initcheck``: reads of device memory never written; ``racecheck``: shared
memory hazards), with PyTorch's caching allocator off (``PYTORCH_NO_CUDA_MEMORY_CACHING=1``) so every
buffer is its own allocation, and with the pipeline's ``unwritten_padding`` mode, which leaves the
padding scale bytes no backend may read unwritten (:func:`harness.pipeline.operands_from`; for
grouped and fused-MoE cases the grouped pipeline's mode of the same name,
:func:`harness.grouped.pipeline.grouped_quantize`, which leaves each expert's group row padding
unwritten).

* :mod:`~harness.sanitizer.findings`: the sanitizer's output (its XML file, ``--xml --save``, and
  the text it prints, which alone names the nearest allocation of an out-of-bounds address) parsed
  into :class:`Finding` records;
* :mod:`~harness.sanitizer.operands`: the *operand map* the child writes (every buffer the harness
  allocated or received: ``a.packed``, ``a.scales``, ``w.packed``, ``w.scales``, ``alpha``, ``out``,
  ``x``, ...; on the grouped level one buffer per expert: ``a.expert[e].scales``,
  ``w13.expert[e].packed``, ... with ``data_ptr``, size and geometry; regions ``real``, ``m_pad``,
  ``group_row_pad``, ``n_pad``, ``k_tail``, ``layout_pad``) and :func:`locate`, which maps an address to the
  operand and padding region it falls in, or how far outside it lies;
* :mod:`~harness.sanitizer.child`: the child process (``python -m harness.sanitizer child``);
* :mod:`~harness.sanitizer.run`: running a trial under the tool and classifying it, choosing cases,
  records and case files, the self-test of the mutants only this oracle catches, the command line.

Outcomes of a sanitized case: ``pass`` (the case ran and the tool reported 0 errors), ``fail``
(findings), ``skip`` (no compute-sanitizer, no GPU, the backend does not run here, or the tool itself
refused: the tool's own message), ``crash`` (the child failed without a finding: its message).  A
skip is never a pass.

This module exports the light part (parsing and mapping: no torch, no GPU needed); running lives in
:mod:`harness.sanitizer.run`.
"""

from harness.sanitizer.findings import TOOLS, Finding, SanitizerReport, merge_reports, parse_text, parse_xml
from harness.sanitizer.operands import (
    MAP_SCHEMA,
    UNWRITTEN_REGIONS,
    dense_entry,
    group_findings,
    locate,
    region_at,
    scale_region,
    scales_entry,
)

__all__ = ["TOOLS", "MAP_SCHEMA", "UNWRITTEN_REGIONS", "Finding", "SanitizerReport", "parse_text", "parse_xml",
           "merge_reports", "dense_entry", "scales_entry", "scale_region", "region_at", "locate", "group_findings"]
