"""Host memory for CPU training: freed activation buffers stay in the process instead of going back to the kernel.

glibc's malloc serves large requests with fresh mmaps and trims the heap's free top once it exceeds a small
threshold, so each training step page-faults its activations back in: on a 2-core AMD EPYC, 90-190 ms of system
time per 3.7 s ViT-S step (NEPA's QK-Norm, RoPE and LayerScale keep more activations than a plain ViT, so it pays
more). Raising the mmap threshold to glibc's ceiling and the trim threshold to 1 GiB keeps those pages mapped:
no page faults in a step after the first two (tests/test_host_memory.py) and NEPA-S from 0.929-0.949x to
0.970-0.974x timm's ViT-S step in benchmarks/step_throughput.py (results/benchmarks/cpu_suite.md). Written
with ctypes: no package exposes mallopt, and the environment-variable form (MALLOC_MMAP_THRESHOLD_) would
reach only processes started through our launchers.
"""

from __future__ import annotations

import ctypes
import sys

# mallopt parameters (glibc's malloc.h)
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_MAX = 32 * 2**20  # glibc's largest allowed mmap threshold on 64-bit hosts
TRIM_THRESHOLD = 2**30


def keep_freed_memory() -> bool:
    """Tune glibc's malloc for training in this process (and the workers it forks); False where there is no glibc."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):  # musl and other C libraries
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_MAX)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
