"""Where the harness runs: device, GPU, compute capability and library versions.

The Triton interpreter must be chosen before any kernel is defined, so
:func:`configure_triton_interpreter` runs when :mod:`harness.kernels` is imported.
"""

from __future__ import annotations

import functools
import importlib.metadata
import importlib.util
import os
import platform
from dataclasses import asdict, dataclass
from typing import Any, Mapping


def configure_triton_interpreter() -> bool:
    """Use the Triton interpreter when no CUDA GPU is visible (unless the user chose already).

    Returns whether the interpreter is in use.
    """
    if "TRITON_INTERPRET" not in os.environ:
        import torch

        if not torch.cuda.is_available():
            os.environ["TRITON_INTERPRET"] = "1"
    return os.environ.get("TRITON_INTERPRET") == "1"


#: distribution name -> import name, where they differ
_MODULE_OF = {"flashinfer-python": "flashinfer", "compressed-tensors": "compressed_tensors",
              "nvidia-modelopt": "modelopt"}


def library_version(dist: str) -> str | None:
    """The installed version of distribution ``dist`` (e.g. ``"flashinfer-python"``), or None when
    it is not installed.

    From the package metadata (``importlib.metadata``) or, where there is none (a package copied
    onto ``PYTHONPATH`` without its dist-info, as FlashInfer travels to the GPU nodes), from the
    module's own ``__version__`` after importing it, marked ``"(no package metadata)"``.  Never
    parsed out of source files: a fallback literal there (FlashInfer's ``version.py`` holds
    ``"0.0.0+unknown"`` for the case its build metadata is missing) is not the version.
    """
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        pass
    module = _MODULE_OF.get(dist, dist.replace("-", "_"))
    if importlib.util.find_spec(module) is None:
        return None
    try:
        mod = importlib.import_module(module)
    except Exception as exc:  # noqa: BLE001 - present but broken: say so rather than guess
        return f"unknown (no package metadata; import failed: {type(exc).__name__})"
    ver = getattr(mod, "__version__", None)
    if not isinstance(ver, str) or not ver:
        return "unknown (no package metadata, no __version__)"
    return f"{ver} (no package metadata)"


_version = library_version


def bare_version(version: str | None) -> str | None:
    """``"0.7.4"`` from ``"0.7.4 (no package metadata)"``; None stays None."""
    return version.split(" ", 1)[0] if version else version


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
    torchao: str | None = None
    compressed_tensors: str | None = None
    modelopt: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def torch_device(self):
        import torch

        return torch.device(self.device)

    def arch(self) -> str:
        """``"SM90"`` on a GPU of compute capability 9.0, ``"cpu"`` without one."""
        return f"SM{self.compute_capability}" if self.device == "cuda" else "cpu"

    def library_versions(self) -> dict[str, str | None]:
        """torch, triton, flashinfer, torchao, compressed_tensors, modelopt -> version (None: not installed)."""
        return {"torch": self.torch, "triton": self.triton, "flashinfer": self.flashinfer,
                "torchao": self.torchao, "compressed_tensors": self.compressed_tensors, "modelopt": self.modelopt}

    def summary(self) -> str:
        return (f"{machine(self.to_dict())}; torch {self.torch}, triton {self.triton}, "
                f"flashinfer {self.flashinfer or 'not installed'}")


def machine(environment: Mapping[str, Any]) -> str:
    """The kind of machine an environment dict (:meth:`Environment.to_dict`, or a case file's
    ``environment``) describes: ``"NVIDIA H200 (SM90)"``, ``"CPU (Triton interpreter)"`` or ``"CPU"``."""
    if environment.get("device") == "cuda":
        return f"{environment.get('gpu_name') or 'a CUDA GPU'} (SM{environment.get('compute_capability')})"
    return "CPU (Triton interpreter)" if environment.get("interpreter") else "CPU"


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
            hypothesis=_version("hypothesis"), python=platform.python_version(), interpreter=interp,
            torchao=_version("torchao"), compressed_tensors=_version("compressed-tensors"),
            modelopt=_version("nvidia-modelopt"))
    return Environment(
        device="cpu", gpu_name=None, compute_capability=None, gpu_count=0, driver=None, cuda=None,
        torch=torch.__version__, triton=_version("triton"), flashinfer=_version("flashinfer-python"),
        hypothesis=_version("hypothesis"), python=platform.python_version(), interpreter=interp,
        torchao=_version("torchao"), compressed_tensors=_version("compressed-tensors"),
            modelopt=_version("nvidia-modelopt"))
