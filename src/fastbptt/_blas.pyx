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


cdef void gemm_into_transposed(bint trans_a, bint trans_b, int m, int n, int k,
                               const floating* a, int lda, const floating* b, int ldb,
                               floating* ct) noexcept nogil:
    """Cᵀ := op(A) op(B), row-major operands as in ``gemm``, the (m, n) product written
    transposed: ct is (n, m) row-major, i.e. the column-major C that BLAS computes natively.

    For the per-step products of the time loops (m = B rows, n = G·H or H, k large) this
    orientation, batch rows as BLAS's m, runs 1.2-1.9x faster in scipy's OpenBLAS than
    ``gemm``'s, whose m is n (measured: 32x128 @ 128x512 from 78 to 145 GFLOP/s, 64x1024 @
    1024x4096 from 134 to 168).
    """
    # Row-major A (m, k) is the column-major Aᵀ: BLAS's op flips each flag.
    cdef char ta = b'N' if trans_a else b'T'
    cdef char tb = b'N' if trans_b else b'T'
    cdef floating one = 1, zero = 0
    if floating is float:
        sgemm(&ta, &tb, &m, &n, &k, &one, <float*> a, &lda, <float*> b, &ldb, &zero, ct, &m)
    else:
        dgemm(&ta, &tb, &m, &n, &k, &one, <double*> a, &lda, <double*> b, &ldb, &zero, ct, &m)
