"""Memory sizes and the budget of work done in RAM, without torch: `data` and the checks before a job need them
at once. device.memory_budget adds the GPU's free memory."""

from __future__ import annotations

import os
import re
from pathlib import Path

from .errors import UserError

_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def parse_bytes(text: str) -> int:
    """'512MB', '2GB', '1.5 GB', '300K' or a plain number of bytes."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([KMGT]?)B?\s*", str(text).upper())
    if not match or float(match.group(1)) <= 0:
        raise UserError(f"memory limit '{text}' is not a size: use e.g. 512MB or 2GB")
    return int(float(match.group(1)) * _UNITS[match.group(2)])


def human(n: float) -> str:
    """Bytes as people read them: 1.5 GB, 300 KB."""
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1024 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"


def image_bytes(n: int, size: int) -> int:
    """Memory of n uint8 RGB images of size x size."""
    return n * 3 * size * size


def available_ram() -> int:
    """RAM this process could still use: Linux's MemAvailable (free memory plus reclaimable cache), capped by the
    container's cgroup limit; 8 GiB where neither can be read."""
    sizes = []
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                sizes.append(int(line.split()[1]) * 1024)
    except OSError:
        pass
    for limit, used in (
        ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
        ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory/memory.usage_in_bytes"),
    ):
        try:
            cap, taken = Path(limit).read_text().strip(), Path(used).read_text().strip()
            if cap.isdigit() and taken.isdigit():
                sizes.append(max(0, int(cap) - int(taken)))
                break
        except OSError:
            continue
    return min(sizes) if sizes else 8 << 30


def ram_budget(limit: str | None = None) -> int:
    """Bytes of images a command may hold in RAM: `limit` or $SYNTHKIT_MEMORY_LIMIT when given, else half of the
    available RAM."""
    limit = limit or os.environ.get("SYNTHKIT_MEMORY_LIMIT")
    return parse_bytes(limit) if limit else available_ram() // 2
