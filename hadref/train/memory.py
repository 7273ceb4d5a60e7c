"""Process-wide allocator setting for training and benchmark processes (glibc only).

glibc's malloc serves every array over its mmap threshold (32 MB at most, by default) from
fresh pages that the kernel must zero on first touch, and unmaps them on free. A training
step allocates and frees many such arrays (the (B, h, T, T) attention probabilities, the
(B, T, 4H) feed-forward activations), so at B16 T256 about 0.4 s of a ~4.5 s step was
kernel time in page faults. Raising the mmap and trim thresholds keeps freed memory in the
heap for the next step: the process then stays at its peak size, which is the right trade
for a training job, and the wrong one for a library: so only the CLI's commands and the
benchmarks call this, never ``import hadref``.
"""

from __future__ import annotations

import ctypes
import sys

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_MMAP_THRESHOLD = 1 << 30          # arrays up to 1 GiB from the heap
_TRIM_THRESHOLD = 2**31 - 1        # (a C int) never give freed heap memory back


def keep_freed_memory() -> bool:
    """Ask glibc to serve large arrays from its heap and keep freed memory for reuse.

    Returns True when the setting took effect, False elsewhere (not Linux, not glibc):
    then nothing changes and everything still works, only page faults cost more.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return (mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD) == 1
            and mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD) == 1)
