"""Build the compiled kernels.

The kernels are compiled once for the baseline of the architecture and, on x86-64, twice
more for AVX2+FMA and AVX-512 (the same source through _kernels_avx2.pyx and
_kernels_avx512.pyx); at import time fastbptt picks the widest build the CPU runs.

The float32 kernels run their own gemm (_step_gemm.h) on an OpenMP thread team; on Linux
they are compiled with -fopenmp, elsewhere without (the same code, on one thread).

Environment variables:
  FASTBPTT_OPENMP=0  build without OpenMP (every kernel on one thread).
  FASTBPTT_NATIVE=1  compile every build for this machine's CPU (-march=native); for local
                     builds only, a wheel built this way may not run on another CPU.
  FASTBPTT_DEBUG=1   bounds and wraparound checks on, no optimisation: for chasing a crash.
  FASTBPTT_SANITIZE=1  AddressSanitizer and UndefinedBehaviorSanitizer in every extension
                     (.ci/sanitize); the interpreter must preload gcc's libasan.so to import it.
"""
import glob
import os
import platform
import sys

from Cython.Build import cythonize
from setuptools import Extension, setup

DEBUG = os.environ.get("FASTBPTT_DEBUG") == "1"
NATIVE = os.environ.get("FASTBPTT_NATIVE") == "1"
OPENMP = sys.platform.startswith("linux") and os.environ.get("FASTBPTT_OPENMP", "1") != "0"

# One set of directives for the whole build.
COMPILER_DIRECTIVES = {
    "language_level": 3,
    "boundscheck": DEBUG,
    "wraparound": DEBUG,
    "initializedcheck": DEBUG,
    "cdivision": True,
    "nonecheck": False,
    "embedsignature": True,
}

compile_args = ["-O0", "-g"] if DEBUG else ["-O3"]
link_args = []
if os.environ.get("FASTBPTT_SANITIZE") == "1":
    # -O1 keeps the reports' stacks readable; UB aborts at its first report instead of going on.
    sanitize = ["-fsanitize=address,undefined", "-fno-omit-frame-pointer",
                "-fno-sanitize-recover=undefined", "-O1", "-g"]
    compile_args, link_args = list(sanitize), list(sanitize)
if NATIVE:
    compile_args.append("-march=native")


X86_64 = platform.machine().lower() in ("x86_64", "amd64")
# x86-64 micro-architecture levels (GCC >= 11, clang >= 12): v3 is AVX2+FMA, v4 adds AVX-512.
KERNEL_BUILDS = {"_kernels": []}
if X86_64 and not NATIVE:
    KERNEL_BUILDS["_kernels_avx2"] = ["-march=x86-64-v3"]
    KERNEL_BUILDS["_kernels_avx512"] = ["-march=x86-64-v4"]


def extension(name, extra=(), openmp=False):
    omp = ["-fopenmp"] if openmp else []
    return Extension(
        f"fastbptt.{name}",
        [f"src/fastbptt/{name}.pyx"],
        include_dirs=["src/fastbptt"],
        extra_compile_args=compile_args + list(extra) + omp,
        extra_link_args=link_args + omp,
        depends=[f"src/fastbptt/{dep}" for dep in ("_kernels.pyx", "_blas.pxd", "_step_gemm.h")]
        + sorted(glob.glob("src/fastbptt/_*.pxi")),
    )


setup(
    ext_modules=cythonize(
        [extension("_blas")]
        + [extension(name, flags, OPENMP) for name, flags in KERNEL_BUILDS.items()],
        compiler_directives=COMPILER_DIRECTIVES,
        nthreads=os.cpu_count() or 1,
    ),
    # The three kernel builds compile side by side.
    options={"build_ext": {"parallel": os.cpu_count() or 1}},
)
