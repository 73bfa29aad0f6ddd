"""The one place that chooses the device, the number format and the memory layout."""

from __future__ import annotations

import contextlib
import os

import torch

from .config import DTYPES, PRECISIONS, check_choice
from .errors import UserError
from .memory import available_ram, image_bytes, parse_bytes, ram_budget  # noqa: F401  (the budget's parts, without torch)


def pick_device(name: str | None = None) -> torch.device:
    """'auto' (the default, or $SYNTHKIT_DEVICE) picks CUDA when present, else the CPU."""
    name = (name or os.environ.get("SYNTHKIT_DEVICE") or "auto").lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"unknown device '{name}': use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device {name} asked for, but this machine has no CUDA GPU: use --device cpu")
    return device


def autocast(device: torch.device) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA (fast tensor cores); plain fp32 on the CPU."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def diffusion_dtype(device: torch.device, name: str = "auto") -> torch.dtype:
    """Weights dtype for diffusion models: fp16 on CUDA by default, fp32 on the CPU."""
    check_choice(name, DTYPES, "--dtype")
    if name == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    return {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[name]


def inversion_dtype(device: torch.device, precision: str = "fp32") -> torch.dtype:
    """Weights dtype of inversion: fp32 as the official code (with TF32 matmuls on CUDA), or bf16 when asked."""
    check_choice(precision, PRECISIONS, "--precision")
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    return torch.float32 if precision == "fp32" else torch.bfloat16


def memory_format(device: torch.device) -> torch.memory_format:
    """channels_last: faster convolutions on CUDA and, measured here, on the CPU too."""
    return torch.channels_last


def memory_budget(device: torch.device, limit: str | None = None) -> int:
    """Bytes of images a command may hold on `device`: `limit` or $SYNTHKIT_MEMORY_LIMIT when given, else half of
    the GPU's free memory (CUDA) or half of the available RAM (CPU). Larger image sets are streamed in chunks."""
    if device.type == "cuda" and not (limit or os.environ.get("SYNTHKIT_MEMORY_LIMIT")):
        return device_memory(device)
    return ram_budget(limit)


def device_memory(device: torch.device) -> int:
    """Half of what the device has free (GPU memory, or available RAM), whatever limit is set for held images: what
    a computation itself (a batch and its activations) may take."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free // 2
    return available_ram() // 2


def job_device(name: str | None = None) -> torch.device:
    """The preamble of every job, once: torch's threads set to the cores this process may use, and the device
    chosen (pick_device)."""
    configure_threads()
    return pick_device(name)


def configure_threads() -> None:
    """Use every core the process may run on (containers often report more than they grant), or $SYNTHKIT_THREADS
    when set (e.g. 1, to check that results do not depend on the thread count)."""
    wanted = os.environ.get("SYNTHKIT_THREADS", "").strip()
    if wanted:
        if not wanted.isdigit() or int(wanted) < 1:
            raise UserError(f"SYNTHKIT_THREADS must be a positive integer, got '{wanted}'")
        torch.set_num_threads(int(wanted))
        return
    try:
        torch.set_num_threads(max(1, len(os.sched_getaffinity(0))))
    except AttributeError:
        pass
