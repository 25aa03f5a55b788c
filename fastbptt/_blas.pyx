"""Row-major gemm over scipy's BLAS (no link-time dependency, scipy's own OpenBLAS).

Every BLAS call of the compiled kernels goes through here and never through numpy: numpy
and scipy each carry an OpenBLAS with its own spinning thread pool, and mixing the two in a
hot loop makes them fight over the cores.
"""
from scipy.linalg.cython_blas cimport dgemm, sgemm


cdef void gemm(bint trans_a, bint trans_b, int m, int n, int k,
               floating alpha, const floating* a, int lda,
               const floating* b, int ldb,
               floating beta, floating* c, int ldc) noexcept nogil:
    """C := alpha * op(A) op(B) + beta * C, row-major; C is (m, n), op(A) (m, k), op(B) (k, n)."""
    # A row-major C is the column-major Cᵀ = op(B)ᵀ op(A)ᵀ: swap the operands, keep the flags.
    cdef char ta = b'T' if trans_a else b'N'
    cdef char tb = b'T' if trans_b else b'N'
    if floating is float:
        sgemm(&tb, &ta, &n, &m, &k, &alpha, <float*> b, &ldb, <float*> a, &lda, &beta, c, &ldc)
    else:
        dgemm(&tb, &ta, &n, &m, &k, &alpha, <double*> b, &ldb, <double*> a, &lda, &beta, c, &ldc)
