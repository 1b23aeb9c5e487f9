"""fmnist.allocator: the memory a step frees stays in the process for the next step."""

import os
import subprocess
import sys

import pytest

from fmnist import allocator

pytestmark = pytest.mark.skipif(not allocator.glibc(), reason="glibc's malloc only")

# A training step's pattern, in a fresh process: two buffers of 16 MiB and their sum, written and freed
STEPS = """
import resource, sys
import numpy as np
from fmnist import allocator

kept = allocator.keep_freed_memory() if sys.argv[1] == "keep" else None

def step():
    first, second = np.ones(4 << 20, np.float32), np.ones(4 << 20, np.float32)
    total = first + second

step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    step()
print(kept, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def page_faults(mode: str, **environment: str) -> tuple[str, int]:
    """What keep_freed_memory returned (or None), and the minor page faults of 20 steps after the first."""
    env = {name: value for name, value in os.environ.items() if name not in allocator.USER_SETTINGS} | environment
    result = subprocess.run([sys.executable, "-c", STEPS, mode], env=env, capture_output=True, text=True, check=True)
    kept, faults = result.stdout.split()
    return kept, int(faults)


def test_a_step_s_freed_memory_is_used_again_without_page_faults():
    kept, faults = page_faults("keep")
    assert kept == "True" and faults < 100  # 48 MiB a step would be 12,288 pages
    kept, faults = page_faults("default")
    assert kept == "None" and faults > 5_000  # glibc's own thresholds give part of it back to the kernel each step


def test_malloc_settings_of_the_user_s_own_are_kept():
    kept, faults = page_faults("keep", GLIBC_TUNABLES="glibc.malloc.trim_threshold=131072")
    assert kept == "False" and faults > 5_000
