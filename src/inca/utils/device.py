"""Where and in which number format the frozen backbone runs.

bf16 is the single biggest speed lever for a frozen backbone: on a CPU with AVX512-BF16 or AMX
a ViT-S forward is ~5x faster with bf16 weights than in fp32 (see ../shared/FACTS.md), and on
CUDA it halves memory traffic. A frozen backbone is never trained, so storing its weights in
bf16 costs no optimiser precision; where bf16 is not native we fall back to fp32 (CPU) or fp16
autocast (older GPUs).
"""

from __future__ import annotations

import contextlib
import functools
from dataclasses import dataclass

import torch

from inca.errors import IncaError

# name -> (weight dtype, autocast dtype or None)
PRECISIONS: dict[str, tuple[torch.dtype, torch.dtype | None]] = {
    "fp32": (torch.float32, None),
    "bf16": (torch.bfloat16, None),  # weights and activations in bf16: fastest for inference
    "amp-bf16": (torch.float32, torch.bfloat16),  # fp32 weights, bf16 autocast
    "amp-fp16": (torch.float32, torch.float16),  # fp32 weights, fp16 autocast (CUDA)
}


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """``None``/"auto" picks CUDA when present, else the CPU."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise IncaError(f"unknown device {device!r}; use auto, cpu, cuda or cuda:N") from None
    if dev.type not in ("cpu", "cuda"):
        raise IncaError(f"device {device!r}: inca runs on cpu or cuda; use auto, cpu or cuda:N")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise IncaError(f"device {device!r} asked for, but CUDA is not available; use 'cpu'")
    return dev


@functools.cache
def cpu_has_native_bf16() -> bool:
    """True when the CPU computes bf16 in hardware (AVX512-BF16 or AMX), not by emulation."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="ignore") as f:
            flags = f.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def native_bf16(device: torch.device) -> bool:
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return device.type == "cpu" and cpu_has_native_bf16()


def resolve_precision(precision: str | None, device: torch.device) -> str:
    """ "auto" -> bf16 where the hardware has it, else fp16 autocast on CUDA, else fp32."""
    if precision in (None, "auto"):
        if native_bf16(device):
            return "bf16"
        return "amp-fp16" if device.type == "cuda" else "fp32"
    if precision not in PRECISIONS:
        valid = ", ".join(["auto", *PRECISIONS])
        raise IncaError(f"unknown precision {precision!r}; valid: {valid}")
    if precision == "amp-fp16" and device.type != "cuda":
        raise IncaError("precision 'amp-fp16' needs a CUDA device; on CPU use 'bf16' or 'fp32'")
    return precision


@dataclass(frozen=True)
class Precision:
    """A resolved precision: the dtype the weights live in and the autocast to run under."""

    name: str
    device: torch.device

    @classmethod
    def resolve(cls, precision: str | None, device: torch.device) -> Precision:
        return cls(resolve_precision(precision, device), device)

    @property
    def weight_dtype(self) -> torch.dtype:
        return PRECISIONS[self.name][0]

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        return PRECISIONS[self.name][1]

    @property
    def output_dtype(self) -> torch.dtype:
        """The one dtype tokens come out in, whatever each op ran in under autocast."""
        return self.autocast_dtype or self.weight_dtype

    def autocast(self) -> contextlib.AbstractContextManager:
        """For the frozen backbone, whose weights are in ``weight_dtype``."""
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def mixed(self) -> contextlib.AbstractContextManager:
        """For modules whose weights stay fp32 (trained or fine-tuned copies, their tasks): the
        autocast that makes them compute as this precision does, none for fp32. The one place
        that decides it, so training and serving a fine-tuned model agree with ``--precision``.
        """
        if self.output_dtype == torch.float32:  # the dtype this precision computes in
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.output_dtype)


def cpu_model() -> str:
    """The CPU's model name, as /proc/cpuinfo gives it ("" where it cannot be read)."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="ignore") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor()


def machine_info(device: torch.device) -> dict[str, object]:
    """What a timing was measured on: wall times from different machines do not compare (the
    same job ran 3.5x slower on a 2-core CPU without AVX512-BF16 than on one with it)."""
    import os

    info: dict[str, object] = {
        "cpu": cpu_model(),
        "cores": len(os.sched_getaffinity(0))
        if hasattr(os, "sched_getaffinity")
        else os.cpu_count(),
        "native_bf16": cpu_has_native_bf16(),
        "torch": torch.__version__,
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def machine_label(info: dict[str, object] | None) -> str:
    """A short name of a machine for tables: "AMD EPYC, 2 cores, AVX512-BF16"."""
    if not info:
        return "unrecorded"
    if info.get("gpu"):
        return str(info["gpu"])
    bf16 = ", AVX512-BF16" if info.get("native_bf16") else ", no native bf16"
    return f"{info.get('cpu') or 'CPU'}, {info.get('cores', '?')} cores{bf16}"


def tune_cpu_allocator() -> bool:
    """Keep freed memory in the process instead of returning it to the OS (glibc only).

    PyTorch's CPU allocator asks the OS for every large tensor and hands it back when freed, so
    each training step pays page faults for all its large temporaries again. Raising glibc's
    mmap and trim thresholds keeps those pages mapped and reused: 25% faster cached training
    here. Called by the ``inca`` command; a library import leaves the allocator alone.
    """
    import ctypes
    import sys

    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3
    ok = libc.mallopt(m_mmap_threshold, 32 << 20)  # glibc's maximum: 32 MiB
    return bool(ok and libc.mallopt(m_trim_threshold, 1 << 30))
