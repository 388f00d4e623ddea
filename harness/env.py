"""Where the harness runs: device, GPU, compute capability and library versions.

The Triton interpreter must be chosen before any kernel is defined, so
:func:`configure_triton_interpreter` runs when :mod:`harness.kernels` is imported.
"""

from __future__ import annotations

import functools
import importlib.metadata
import importlib.util
import os
import re
import platform
from dataclasses import asdict, dataclass


def configure_triton_interpreter() -> bool:
    """Use the Triton interpreter when no CUDA GPU is visible (unless the user chose already).

    Returns whether the interpreter is in use.
    """
    if "TRITON_INTERPRET" not in os.environ:
        import torch

        if not torch.cuda.is_available():
            os.environ["TRITON_INTERPRET"] = "1"
    return os.environ.get("TRITON_INTERPRET") == "1"


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        pass
    # a package copied without its metadata (e.g. a slimmed wheel on PYTHONPATH): read its version
    # file rather than importing it (importing flashinfer takes seconds)
    module = {"flashinfer-python": "flashinfer"}.get(dist, dist.replace("-", "_"))
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        return None
    for loc in spec.submodule_search_locations:
        for name in ("version.py", "_build_meta.py", "__init__.py"):
            try:
                text = open(os.path.join(loc, name), encoding="utf-8").read()
            except OSError:
                continue
            m = re.search(r"""__version__\s*=\s*["']([^"']+)["']""", text)
            if m:
                return m.group(1) + " (no package metadata)"
    return None


@dataclass(frozen=True)
class Environment:
    device: str                      # "cuda" or "cpu"
    gpu_name: str | None
    compute_capability: int | None   # major*10 + minor, e.g. 90 for Hopper
    gpu_count: int
    driver: str | None
    cuda: str | None
    torch: str | None
    triton: str | None
    flashinfer: str | None
    hypothesis: str | None
    python: str
    interpreter: bool

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def torch_device(self):
        import torch

        return torch.device(self.device)

    def summary(self) -> str:
        where = f"{self.gpu_name} (SM{self.compute_capability})" if self.device == "cuda" else \
            "CPU (Triton interpreter)" if self.interpreter else "CPU"
        return (f"{where}; torch {self.torch}, triton {self.triton}, "
                f"flashinfer {self.flashinfer or 'not installed'}")


def _driver_version() -> str | None:
    try:
        import pynvml  # type: ignore

        pynvml.nvmlInit()
        v = pynvml.nvmlSystemGetDriverVersion()
        return v.decode() if isinstance(v, bytes) else str(v)
    except Exception:
        return None


def physical_gpu() -> dict | None:
    """The physical GPU this process computes on, as NVML sees it (NVML ignores
    CUDA_VISIBLE_DEVICES): the device whose running compute processes include this PID.  Call after
    CUDA has been used in this process.  None when NVML is unavailable."""
    try:
        import pynvml  # type: ignore

        pynvml.nvmlInit()
        pid = os.getpid()
        for i in range(pynvml.nvmlDeviceGetCount()):
            h = pynvml.nvmlDeviceGetHandleByIndex(i)
            procs = pynvml.nvmlDeviceGetComputeRunningProcesses(h)
            if any(p.pid == pid for p in procs):
                uuid = pynvml.nvmlDeviceGetUUID(h)
                bus = pynvml.nvmlDeviceGetPciInfo(h).busId
                return {"nvml_index": i, "uuid": uuid.decode() if isinstance(uuid, bytes) else str(uuid),
                        "pci_bus_id": bus.decode() if isinstance(bus, bytes) else str(bus)}
    except Exception:  # noqa: BLE001 - NVML missing or restricted: no claim is made
        return None
    return None


@functools.lru_cache(maxsize=1)
def current() -> Environment:
    """The environment of this process (cached: it does not change within a process)."""
    import torch

    interp = configure_triton_interpreter()
    if torch.cuda.is_available():
        idx = torch.cuda.current_device()
        major, minor = torch.cuda.get_device_capability(idx)
        return Environment(
            device="cuda", gpu_name=torch.cuda.get_device_name(idx), compute_capability=major * 10 + minor,
            gpu_count=torch.cuda.device_count(), driver=_driver_version(), cuda=torch.version.cuda,
            torch=torch.__version__, triton=_version("triton"), flashinfer=_version("flashinfer-python"),
            hypothesis=_version("hypothesis"), python=platform.python_version(), interpreter=interp)
    return Environment(
        device="cpu", gpu_name=None, compute_capability=None, gpu_count=0, driver=None, cuda=None,
        torch=torch.__version__, triton=_version("triton"), flashinfer=_version("flashinfer-python"),
        hypothesis=_version("hypothesis"), python=platform.python_version(), interpreter=interp)
