"""A plugin backend whose behaviour changes with the version of the library it wraps.

``nvfp4_tracking_lib`` is a small NVFP4 quantization library written out by
:func:`write_library` at a given version, the way a real library changes between releases:

* 1.x quantizes nothing: it returns zeroed codes and scales without raising (silent garbage);
* 2.x fixed bfloat16 input, refuses float16 input with its own exception class
  (``NotSupportedHere``), and still returns garbage for float32 input;
* 3.x is correct for every input.

``tracking-demo-quant`` wraps it as the harness's real adapters wrap FlashInfer: the library's
refusal class becomes :class:`~harness.backends.protocol.Unsupported`, everything else is the
library's result.  The upstream-tracking tests (tests/test_tracking.py) run regression cases on it
with each version installed.
"""

from __future__ import annotations

import importlib
import textwrap
from pathlib import Path

import torch

from harness.backends.protocol import QuantizerBackend, Requirements, Unsupported
from harness.format import pack_e2m1
from harness.layouts import ScaleLayout

LIBRARY = "nvfp4_tracking_lib"

_SOURCE = '''
"""NVFP4 quantization with linear scales (a library for the harness's upstream-tracking tests)."""
__version__ = "{version}"


class NotSupportedHere(Exception):
    """This release cannot quantize this input."""


def quantize(x, global_scale):
    """(codes uint8 [rows, k], scale bytes uint8 [rows, k/16]) for the encode-divisor global scale."""
    import torch
    from harness.format import BLOCK_SIZE, reference_quantize

    major = int(__version__.split(".")[0])
    rows, k = x.shape
    if major == 2 and x.dtype == torch.float16:
        raise NotSupportedHere(f"float16 input is not supported by release {{__version__}}")
    if major == 1 or (major == 2 and x.dtype == torch.float32):
        return (torch.zeros((rows, k), dtype=torch.uint8),
                torch.zeros((rows, k // BLOCK_SIZE), dtype=torch.uint8))
    return reference_quantize(x.cpu(), global_scale.reshape(1).cpu())
'''


def write_library(root: Path, version: str) -> Path:
    """Write ``nvfp4_tracking_lib`` at ``version`` under ``root`` (a folder to put on sys.path);
    no package metadata, like a library copied onto PYTHONPATH: its ``__version__`` is its version."""
    pkg = Path(root) / LIBRARY
    pkg.mkdir(parents=True, exist_ok=True)
    (pkg / "__init__.py").write_text(textwrap.dedent(_SOURCE.format(version=version)))
    return Path(root)


class TrackingDemoQuantizer(QuantizerBackend):
    name = "tracking-demo-quant"
    description = "nvfp4_tracking_lib.quantize (test library whose behaviour depends on its release), linear scales"
    layout = ScaleLayout.LINEAR
    requirements = Requirements(runs_on_cpu=True, packages=(LIBRARY,), a_layouts=(ScaleLayout.LINEAR,),
                                w_layout=ScaleLayout.LINEAR)

    def quantize(self, x: torch.Tensor, global_scale: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        lib = importlib.import_module(LIBRARY)
        try:
            codes, scales = lib.quantize(x, global_scale)
        except lib.NotSupportedHere as exc:
            raise Unsupported(f"{self.name}: {LIBRARY} {lib.__version__} refused: "
                              f"{type(exc).__name__}: {exc}") from exc
        return pack_e2m1(codes).to(x.device), scales.to(x.device)


def backends():
    return [TrackingDemoQuantizer()]
