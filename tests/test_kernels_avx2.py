"""The tile kernel's tests again on AVX2 machine code, whatever the machine's own width.

The kernels' IR is the same for every x86-64 host; LLVM turns it into AVX-512 code on an
AVX-512 CPU (zmm registers, VPOPCNTQ) and into AVX2 code elsewhere. On an AVX-512 machine
the ordinary test run checks the AVX-512 code; this test runs the primitives' tests, the
property test against the NumPy reference and the tile-vs-row equality once more in a
subprocess whose Numba compiles for Haswell (``NUMBA_CPU_NAME=haswell``: AVX2, FMA, no
AVX-512), so both widths are checked on one machine. On an AVX2-only machine both runs
check AVX2 code; AVX-512 code cannot run there (the figures in benchmarks/README.md say
which CPU measured which). Numba keys its cache on the CPU name, so the two builds are
cached apart.
"""

import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent


def _runs_avx2() -> bool:
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return False
    import llvmlite.binding as llvm

    features = llvm.get_host_cpu_features()
    return bool(features.get("avx2")) and bool(features.get("fma"))


@pytest.mark.skipif(not _runs_avx2(), reason="needs an x86-64 CPU with AVX2 and FMA")
def test_tile_kernel_tests_pass_on_avx2_code():
    env = dict(os.environ, NUMBA_CPU_NAME="haswell", NUMBA_CPU_FEATURES="",
               NUMBA_NUM_THREADS=os.environ.get("NUMBA_NUM_THREADS", "1"))
    probe = subprocess.run(
        [sys.executable, "-c", "from numba.core import config; print(config.CPU_NAME)"],
        env=env, capture_output=True, text=True, check=True)
    assert probe.stdout.strip() == "haswell"
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider",
         str(TESTS / "test_simd.py"), str(TESTS / "test_hamming.py"),
         "-k", "simd or tile or levels or count or select or weighted or "
               "equals_float_attention_on_signs_with_topn"],
        env=env, capture_output=True, text=True, cwd=TESTS.parent, timeout=1800)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert " passed" in result.stdout
