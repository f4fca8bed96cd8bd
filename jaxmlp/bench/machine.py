"""Where a benchmark's numbers come from: the CPU model, cores, load, backend, device and versions, and
this process's peak memory."""
from __future__ import annotations

import os
import platform
import resource
import sys

import jax
import numpy as np


def machine_info() -> dict:
    """Where the numbers come from: CPU model, cores, backend, device, versions."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "system": platform.system(), "python": platform.python_version(),
            "backend": jax.default_backend(), "device": str(jax.devices()[0].device_kind),
            "device_count": jax.device_count(), "jax": jax.__version__, "jaxlib": _jaxlib_version(),
            "numpy": np.__version__, "load_average": _load_average()}


def _load_average() -> float | None:
    """The 1-minute load average (runnable processes; above the core count, rows share the CPU with
    other work), or None where the OS has none."""
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None


def _jaxlib_version() -> str:
    try:
        import jaxlib

        return str(jaxlib.__version__)
    except (ImportError, AttributeError):
        return "unknown"


def peak_rss_mb() -> float:
    """This process's peak resident memory so far, in MiB (on Linux the kernel's VmHWM, which a test
    can reset by writing 5 to /proc/self/clear_refs; elsewhere getrusage's maximum)."""
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024
    except (OSError, StopIteration, ValueError, IndexError):
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return rss / 2 ** 20 if sys.platform == "darwin" else rss / 1024  # bytes on macOS, KiB on Linux
