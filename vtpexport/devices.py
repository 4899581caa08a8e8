"""Where and in which dtype a model runs, and whether its weights fit there: decided before a
weight is read, so that a model too big for the machine is refused in one line instead of the
process being killed by the kernel half-way through loading."""

from __future__ import annotations

import torch

from .errors import UserError
from .graph.args import LlavaArgs

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
# Activations, statistics and the allocator beside the weights: calibrating llava-1.5-7b in bf16
# peaked at 1.0x its weight bytes, so 15% is room, not a guess at the working set.
HEADROOM = 1.15


def resolve_device(name: str) -> torch.device:
    """`auto`: the first CUDA device when torch sees one, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise UserError(f"--device: unknown device {name!r} (auto, cpu, cuda, cuda:1, ...)") from None
    available = {"cpu": True, "cuda": torch.cuda.is_available(), "mps": torch.backends.mps.is_available()}
    if not available.get(device.type, False):
        raise UserError(f"--device {name}: no such device is available here")
    return device


def weight_bytes(args: LlavaArgs, dtype: torch.dtype) -> int:
    from .models.loader import meta_graph

    return sum(p.numel() for p in meta_graph(args).parameters()) * dtype.itemsize


def available_bytes(device: torch.device) -> int | None:
    """Memory free for new allocations on `device` (None: unknown)."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    if device.type != "cpu":
        return None
    try:
        with open("/proc/meminfo") as meminfo:
            fields = dict(line.split(":", 1) for line in meminfo)
        return int(fields["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        return None


def _fits(args: LlavaArgs, dtype: torch.dtype, free: int | None) -> bool:
    return free is None or weight_bytes(args, dtype) * HEADROOM <= free


def resolve_dtype(name: str, args: LlavaArgs, device: torch.device) -> torch.dtype:
    """`auto`: bfloat16 (float16 where the GPU lacks it) on a GPU; float32 on the CPU when the
    weights fit in it, else bfloat16. A named dtype is refused when the weights do not fit."""
    free = available_bytes(device)
    if name == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32 if _fits(args, torch.float32, free) else torch.bfloat16
    if name not in DTYPES:
        raise UserError(f"--dtype must be auto or one of {', '.join(DTYPES)}, got {name!r}")
    dtype = DTYPES[name]
    if not _fits(args, dtype, free):
        need = weight_bytes(args, dtype)
        smaller = [n for n, d in DTYPES.items() if d.itemsize < dtype.itemsize and _fits(args, d, free)]
        fix = f"use --dtype {smaller[-1]} ({weight_bytes(args, DTYPES[smaller[-1]]) / 1e9:.1f} GB)" if smaller else ""
        fix = fix or "use a machine (or --device) with more memory"
        raise UserError(
            f"the weights need {need / 1e9:.1f} GB in {name} (+{HEADROOM - 1:.0%} to run), and {device} has "
            f"{free / 1e9:.1f} GB available: {fix}"
        )
    return dtype


def dtype_name(dtype: torch.dtype) -> str:
    return next(name for name, d in DTYPES.items() if d == dtype)
