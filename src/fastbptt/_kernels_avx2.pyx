# The AVX2 build of the compiled kernels: _kernels.pyx itself, compiled with wider
# vector instructions (see setup.py). _backend.py imports it only when the CPU runs them.
include "_kernels.pyx"
