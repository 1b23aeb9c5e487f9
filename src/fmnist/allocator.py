"""Keep the memory of each training step in the process: glibc's malloc would hand it back to the kernel.

    from fmnist import allocator
    allocator.keep_freed_memory()   # True where it took effect (Linux with glibc)

A training step allocates its activations and gradients (11 MB for the spec's first convolution at
batch 128) and frees them at its end. glibc's malloc adapts its thresholds to the sizes it sees
freed, but in some processes it goes on handing those megabytes back to the kernel after every step
(unmapping the chunks it mapped on their own, or trimming the free top of its heap); the next step
takes them again as new pages, each one a page fault and a page of zeros. On the PyTorch backend,
whose CPU tensors come straight from malloc, 7 of 11 runs of the throughput benchmark fell into
this: 5.6-10 million page faults in four epochs instead of 0.26 million, and about 30% fewer images
per second (BENCHMARKS.md). TensorFlow keeps pools of its own and showed no such runs.

Fixing the two thresholds (which also turns off glibc's adaptation) keeps chunks of up to 32 MiB
(`M_MMAP_THRESHOLD`'s largest value) in the heap, and up to 1 GiB of free memory at its top, for
the next step. The `fmnist` command calls this at start; a script of your own can too. A process
whose environment sets glibc's malloc parameters itself (`GLIBC_TUNABLES`, `MALLOC_TRIM_THRESHOLD_`,
`MALLOC_MMAP_THRESHOLD_`) keeps its own.
"""

from __future__ import annotations

import ctypes
import os

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's <malloc.h>
MMAP_THRESHOLD = 32 << 20  # the largest glibc accepts on 64-bit machines (half its 64 MiB heaps)
TRIM_THRESHOLD = 1 << 30
USER_SETTINGS = ("GLIBC_TUNABLES", "MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_")


def keep_freed_memory() -> bool:
    """Set glibc's mmap and trim thresholds for a training process; False where they were left alone."""
    if not glibc() or any(name in os.environ for name in USER_SETTINGS):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    # mallopt returns 1 on success, 0 for a value it refuses
    return bool(libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))


def glibc() -> bool:
    try:
        return os.confstr("CS_GNU_LIBC_VERSION").startswith("glibc")
    except (AttributeError, ValueError, OSError):  # no confstr (Windows), or no such name (macOS, musl)
        return False
