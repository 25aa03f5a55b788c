# Row-major BLAS over scipy.linalg.cython_blas, fused over float and double.
from cython cimport floating

cdef void gemm(bint trans_a, bint trans_b, int m, int n, int k,
               floating alpha, const floating* a, int lda,
               const floating* b, int ldb,
               floating beta, floating* c, int ldc) noexcept nogil

cdef void gemm_into_transposed(bint trans_a, bint trans_b, int m, int n, int k,
                               const floating* a, int lda, const floating* b, int ldb,
                               floating* ct) noexcept nogil
