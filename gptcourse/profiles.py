"""Size profiles: one notebook, three sizes.

Every lesson takes its sizes from :func:`pick`, so the same code runs

* ``ci``  -- in seconds, on two CPU cores (continuous integration),
* ``cpu`` -- in minutes, on a laptop,
* ``gpu`` -- at full size, on one Colab or cluster GPU.

The profile comes from the environment variable ``GPTCOURSE_PROFILE``; when it is unset,
``CI=true`` selects ``ci`` and otherwise the hardware decides (``gpu`` when CUDA is available,
else ``cpu``).

>>> steps = pick(ci=20, cpu=2_000, gpu=20_000)  # doctest: +SKIP
"""

from __future__ import annotations

import os
from typing import Any, TypeVar

PROFILES = ("ci", "cpu", "gpu")
_MISSING = object()
T = TypeVar("T")


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in {"1", "true", "yes", "on"}


def profile() -> str:
    """Return the active size profile: ``"ci"``, ``"cpu"`` or ``"gpu"``."""
    name = os.environ.get("GPTCOURSE_PROFILE", "").strip().lower()
    if name:
        if name not in PROFILES:
            raise ValueError(
                f"GPTCOURSE_PROFILE is {name!r}; set it to one of {', '.join(PROFILES)} "
                "or unset it to detect the profile from the hardware"
            )
        return name
    if _truthy(os.environ.get("CI")):
        return "ci"
    import torch

    return "gpu" if torch.cuda.is_available() else "cpu"


def pick(*, ci: T, cpu: Any = _MISSING, gpu: Any = _MISSING) -> T:
    """Return the value for the active profile.

    ``gpu`` falls back to ``cpu`` and ``cpu`` falls back to ``ci`` when not given, so
    ``pick(ci=10, cpu=1000)`` uses 1000 on a GPU too.
    """
    active = profile()
    if active == "gpu" and gpu is not _MISSING:
        return gpu
    if active in ("gpu", "cpu") and cpu is not _MISSING:
        return cpu
    return ci


def device(prefer: str | None = None) -> str:
    """Best available torch device name: ``cuda`` > ``mps`` > ``cpu``.

    ``prefer`` (or the environment variable ``GPTCOURSE_DEVICE``) forces one; asking for a
    device that is not available is an error rather than a silent fallback.
    """
    import torch

    wanted = (prefer or os.environ.get("GPTCOURSE_DEVICE", "")).strip().lower()
    available = {
        "cuda": torch.cuda.is_available(),
        "mps": bool(getattr(torch.backends, "mps", None)) and torch.backends.mps.is_available(),
        "cpu": True,
    }
    if wanted:
        base = wanted.split(":")[0]
        if base not in available:
            raise ValueError(f"unknown device {wanted!r}; use one of cuda, mps, cpu")
        if not available[base]:
            raise RuntimeError(
                f"device {wanted!r} was requested but is not available on this machine; "
                "unset GPTCOURSE_DEVICE or pick another device"
            )
        return wanted
    for name in ("cuda", "mps", "cpu"):
        if available[name]:
            return name
    return "cpu"  # pragma: no cover


def describe() -> dict[str, str]:
    """A small report of the environment, printed by lesson 00 and ``gptcourse info``."""
    import platform

    import torch

    info = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "profile": profile(),
        "device": device(),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
        info["bf16"] = str(torch.cuda.is_bf16_supported())
    return info


def online(host: str = "huggingface.co", port: int = 443, timeout: float = 3.0) -> bool:
    """Whether ``host`` answers a TCP connection within ``timeout`` seconds (default: the
    Hugging Face hub). Lessons use it to download pretrained weights when they can and to say
    what they skipped when they cannot. ``GPTCOURSE_OFFLINE=1`` or ``HF_HUB_OFFLINE=1`` answer
    False without trying."""
    import socket

    if _truthy(os.environ.get("GPTCOURSE_OFFLINE")) or _truthy(os.environ.get("HF_HUB_OFFLINE")):
        return False
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def cpu_threads() -> int:
    """How many CPU threads PyTorch should use now: the cores that the 1-minute load average
    leaves idle (at least 1). On a shared or busy machine, OpenMP threads that wait for cores
    other programs hold can make a step many times slower than one thread would; on an idle
    laptop this is simply the number of cores. ``torch.set_num_threads(cpu_threads())``."""
    cores = os.cpu_count() or 1
    try:
        busy = os.getloadavg()[0]
    except (AttributeError, OSError):  # Windows has no load average
        return cores
    return max(1, min(cores, cores - int(busy + 0.5)))
