"""The GPUs this process sees: pynvml when importable, else `nvidia-smi` when on PATH.

Any failure (no driver, no device, a hung nvidia-smi) means no GPUs, and the source says why.
"""

from __future__ import annotations

import shutil
import subprocess

from workers.node import parsing
from workers.node.parsing import GpuInfo

NVIDIA_SMI_QUERY = "index,name,memory.total,memory.used,utilization.gpu"
NVIDIA_SMI_TIMEOUT = 5.0


def read_gpus() -> tuple[list[GpuInfo], str]:
    """The GPUs this process sees and where that came from: pynvml when importable, else
    `nvidia-smi` when on PATH; any failure means no GPUs."""
    gpus = _nvml_gpus()
    if gpus is not None:
        return gpus, "pynvml"
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return [], "none (no pynvml, no nvidia-smi)"
    try:
        out = subprocess.run(
            [exe, f"--query-gpu={NVIDIA_SMI_QUERY}", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=NVIDIA_SMI_TIMEOUT,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        return [], f"none (nvidia-smi failed: {type(exc).__name__})"
    return parsing.parse_nvidia_smi(out), "nvidia-smi"


def _nvml_gpus() -> list[GpuInfo] | None:
    try:
        import pynvml  # type: ignore[import-not-found, import-untyped, unused-ignore]
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()  # reference counted: cheap after the first
        try:
            gpus = []
            for i in range(pynvml.nvmlDeviceGetCount()):
                handle = pynvml.nvmlDeviceGetHandleByIndex(i)
                mem = pynvml.nvmlDeviceGetMemoryInfo(handle)
                name = pynvml.nvmlDeviceGetName(handle)
                try:
                    util: float | None = float(pynvml.nvmlDeviceGetUtilizationRates(handle).gpu)
                except pynvml.NVMLError:
                    util = None
                gpus.append(
                    GpuInfo(
                        index=i,
                        name=name.decode() if isinstance(name, bytes) else str(name),
                        memory_total=int(mem.total),
                        memory_used=int(mem.used),
                        utilization=util,
                    )
                )
            return gpus
        finally:
            pynvml.nvmlShutdown()
    except Exception:  # any NVML failure (no driver, no device) falls through to nvidia-smi
        return None
