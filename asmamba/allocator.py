"""CPU memory allocator settings for faster inference (glibc only; a no-op elsewhere).

PyTorch on CPU allocates and frees large tensors on every forward pass. glibc hands blocks above its mmap threshold
back to the kernel on free, so the next pass page-faults and zero-fills the same memory again, and it trims the heap
top eagerly. On this project's 2-core machine that costs 35-40 % of a 640x480 AS-Mamba (and kornia LoFTR) forward.
:func:`tune_cpu_allocator` keeps freed memory in the process instead, as the environment variables
``MALLOC_MMAP_THRESHOLD_``, ``MALLOC_TRIM_THRESHOLD_`` and ``MALLOC_TOP_PAD_`` would; jemalloc or tcmalloc through
``LD_PRELOAD`` do the same job. The price is a process that holds on to its peak memory.

The ``asmamba`` command line and the benchmarks call it (``ASMAMBA_TUNE_MALLOC=0`` turns that off); as a library,
call it yourself (it changes the whole process).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

# glibc's mallopt parameter numbers (malloc.h)
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3
_INT_MAX = 2**31 - 1


def tune_cpu_allocator(mmap_threshold_mib: int = 32, top_pad_mib: int = 1024) -> bool:
    """Keep large freed blocks in the process (glibc's ``mallopt``). Returns whether the settings took effect.

    Args:
        mmap_threshold_mib: blocks up to this size come from the heap, not fresh ``mmap`` (glibc caps it at 32 MiB
            on 64-bit).
        top_pad_mib: extra memory taken with each heap growth; the heap is never trimmed.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and others have no mallopt
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    settings = [(_M_MMAP_THRESHOLD, mmap_threshold_mib * 2**20), (_M_TRIM_THRESHOLD, _INT_MAX),
                (_M_TOP_PAD, min(top_pad_mib * 2**20, _INT_MAX))]
    return all(mallopt(param, value) == 1 for param, value in settings)


def tune_from_environment() -> bool:
    """:func:`tune_cpu_allocator` unless ``ASMAMBA_TUNE_MALLOC=0`` (what the command line and benchmarks call)."""
    if os.environ.get("ASMAMBA_TUNE_MALLOC", "1") == "0":
        return False
    return tune_cpu_allocator()
