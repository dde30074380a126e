"""Weight memory in 2 MiB pages, and how to check that it really is (Linux transparent huge pages).

Chapter: book/fast/sparse_ffn

A sparse decode reads scattered weight rows of a few KiB: with 4 KiB pages each row needs TLB
entries of its own (and a page walk costs more in a virtual machine), a 2 MiB page covers 128
fp32 rows of 4096 values. :func:`empty_huge_pages` allocates memory advised for huge pages;
:func:`huge_page_share` measures how much of a tensor Linux really put in them, and
:func:`thp_mode` reads the switches that decide it. Measure the share before crediting a speed-up
to huge pages: the kernel may refuse them.
"""

from __future__ import annotations

import math
import mmap
from pathlib import Path

import numpy as np
import torch

__all__ = ["empty_huge_pages", "thp_mode", "huge_page_share"]


def empty_huge_pages(*shape: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """An uninitialized CPU tensor in memory advised for 2 MiB transparent huge pages.

    Linux ``madvise(MADV_HUGEPAGE)`` on a 2 MiB-aligned private anonymous map (honoured when
    /sys/kernel/mm/transparent_hugepage/enabled is ``always`` or ``madvise``); elsewhere a plain
    ``torch.empty``.
    """
    nbytes = math.prod(shape) * dtype.itemsize
    if nbytes == 0 or not hasattr(mmap, "MADV_HUGEPAGE"):
        return torch.empty(*shape, dtype=dtype)
    huge = 2 * 2**20
    # private: an anonymous mmap is MAP_SHARED by default, i.e. shared memory, which THP leaves
    # in 4 KiB pages unless .../transparent_hugepage/shmem_enabled allows it (``never`` here)
    buf = mmap.mmap(-1, nbytes + huge, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    buf.madvise(mmap.MADV_HUGEPAGE)  # freed with the last view of it
    raw = np.frombuffer(buf, dtype=np.uint8)
    start = -raw.ctypes.data % huge
    return torch.from_numpy(raw[start:start + nbytes]).view(dtype).view(shape)


def thp_mode(switch: str = "enabled",
             folder: str | Path = "/sys/kernel/mm/transparent_hugepage") -> str | None:
    """The mode of Linux's transparent huge pages: the bracketed word of ``folder/switch``
    (``enabled`` for private memory, ``shmem_enabled`` for shared memory), or None where there
    is no such file."""
    try:
        text = Path(folder, switch).read_text()
    except OSError:
        return None
    return text[text.index("[") + 1:text.index("]")]


def huge_page_share(t: torch.Tensor) -> float | None:
    """The share of ``t``'s bytes that lie in transparent huge pages (``AnonHugePages`` of the
    mappings that hold it, from /proc/self/smaps), or None where there is no such file."""
    try:
        lines = Path("/proc/self/smaps").read_text().splitlines()
    except OSError:
        return None
    lo, hi = t.data_ptr(), t.data_ptr() + t.numel() * t.element_size()
    huge, inside = 0, False
    for line in lines:
        head = line.split()[0]
        if "-" in head and not head.endswith(":"):  # a mapping's first line: start-end perms …
            start, end = (int(a, 16) for a in head.split("-"))
            inside = start < hi and lo < end
        elif inside and head == "AnonHugePages:":
            huge += int(line.split()[1]) * 1024
    return min(1.0, huge / (hi - lo)) if hi > lo else 0.0
