"""fastbptt's own float32 gemm (``_step_gemm.h``), in every compiled build this CPU runs.

The float32 kernels run their products on it: the hoisted ones of every size through
``matmul`` (B packed a chunk of its rows at a time: 1024, or for a narrow B as many whole
blocks of 256 as 256K floats hold), the per-step ones through ``fb_gemm`` on weights packed
once. ``_matmul`` reaches the own gemm at every size, so that these tests cover it;
``_matmul_path`` says where the kernels' own products of a size run. Its tiles differ per
build (8 rows of 2x16 floats with AVX-512, 6 rows of 2x8 with AVX2, 2x4 in the baseline; and
with AVX-512, for a B of at least 512 columns, 6 rows of 4x16 over 64-column panels), so the
shapes here cross every tile edge: rows and columns not a multiple of a tile, a last panel one
to three vectors wide or narrower (its own kernels), a block's last rows split in two tiles,
k past a packing chunk (k = 1100 over n = 300, 9000 over a narrow 33), enough rows to share
row ranges among threads, and the empty cases. Products with a narrow side (k of up to 4,
n of up to 8, m of up to 2) run in narrow forms that pack nothing (``fb_matmul_narrow``);
NARROW_SHAPES cross their edges too. An Elman or LSTM layer's dW_ih and dW_hh, one δᵀ times
two B's, run as a pair where it pays (``fb_matmul_pair``); PAIR_SHAPES cross its edges.
"""
import os

import numpy as np
import pytest

from fastbptt import _backend

BUILDS = _backend.compiled_builds()
pytestmark = pytest.mark.skipif(not BUILDS, reason="the compiled kernels are not in use (FASTBPTT_PUREPYTHON)")
LEVELS = sorted(BUILDS, key=_backend.CPU_LEVELS.index)

# (m, k, n)
SHAPES = [(1, 1, 1), (1, 100, 100), (3, 5, 7), (7, 33, 65), (9, 64, 31), (32, 128, 512),
          (17, 300, 100), (130, 600, 70), (200, 40, 33), (700, 70, 129), (5, 2100, 37),
          (64, 1025, 48), (401, 70, 40), (3, 1100, 300), (5, 9000, 33)]
# (m, k, n) over the AVX-512 build's wide panels (n >= 512): last panels of 1 to 64 columns
# (513, 520, 545, 560, 600, 1000), row counts whose last tiles split (7, 8, 9, 13, 50) or run
# whole (6, 64), k past a block of 256 and a packing chunk
WIDE_SHAPES = [(6, 64, 512), (7, 70, 513), (8, 33, 520), (9, 300, 545), (13, 260, 560),
               (50, 1100, 600), (64, 256, 1024), (100, 20, 1000)]

# (m, k, n) with a narrow side, each with the form it takes for a as stored / transposed
# (in the AVX-512 build; the others' limits are narrower, test_narrow_shapes_take_the_narrow_forms):
# k <= 4 (a as stored): c's rows in axpy form, n a few vectors, a vector's tail, or less;
# n <= 8 (a as stored): dot products, eight rows at a time and the rows left over, k's tail;
# n <= 4 (a transposed): cᵀ in axpy form over chunks of 256 of a's rows, a last chunk of
# k % 4 rows, m a vector or more and its tail;
# m <= 2 (b as stored, n a vector or more): c's rows in axpy form over b's rows, the same.
NARROW_SHAPES = [(1600, 2, 100), (37, 1, 17), (50, 4, 5), (300, 3, 530), (1600, 100, 2),
                 (13, 9, 1), (70, 33, 8), (7, 200, 3), (100, 1600, 2), (27, 90, 4), (60, 5, 3),
                 (16, 5, 1), (517, 701, 3), (1, 1600, 100), (2, 300, 17), (2, 701, 530)]


def _operands(rng, m, k, n, trans_a, trans_b, dtype):
    a = rng.standard_normal((k, m) if trans_a else (m, k)).astype(dtype)
    b = rng.standard_normal((n, k) if trans_b else (k, n)).astype(dtype)
    return a, b


@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("trans_a", [False, True])
@pytest.mark.parametrize("trans_b", [False, True])
@pytest.mark.parametrize("shape", SHAPES + WIDE_SHAPES + NARROW_SHAPES,
                         ids=lambda s: "x".join(map(str, s)))
def test_matmul_matches_numpy(level, trans_a, trans_b, shape, assert_close):
    m, k, n = shape
    rng = np.random.default_rng(m * 1000003 + k * 1009 + n + 2 * trans_a + trans_b)
    a, b = _operands(rng, m, k, n, trans_a, trans_b, np.float32)
    op_a = a.T if trans_a else a
    op_b = b.T if trans_b else b
    exact = op_a.astype(np.float64) @ op_b.astype(np.float64)
    got = BUILDS[level]._matmul(a, b, trans_a, trans_b)
    assert_close(got, exact.astype(np.float32), np.float32, "op(a) @ op(b)")
    c = rng.standard_normal((m, n)).astype(np.float32)
    c_before = c.copy()
    got = BUILDS[level]._matmul(a, b, trans_a, trans_b, c)
    assert_close(got, (exact + c).astype(np.float32), np.float32, "c + op(a) @ op(b)")
    np.testing.assert_array_equal(c, c_before)   # the hook copies c; the kernels add in place


@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("trans_a", [False, True])
@pytest.mark.parametrize("shape", [(700, 300, 129), (130, 1600, 100), (403, 260, 40), (64, 200, 64),
                                   (3200, 2, 100), (1600, 100, 3), (100, 3200, 2), (403, 1601, 4),
                                   (2, 3201, 200)],
                         ids=lambda s: "x".join(map(str, s)))
def test_matmul_same_bits_on_any_thread_count(level, trans_a, shape, restore_threads):
    """A hoisted product (a dW's δᵀ read transposed, copied a block of rows at a time, or A's
    rows in place) sums each element in the same order on one thread (row blocks walked in
    turn) as on several (row ranges per thread): the same bits on 1, 2 and 3 threads. So do
    the narrow forms (the last five shapes), shared by rows or by runs of columns."""
    import fastbptt as fb
    m, k, n = shape
    rng = np.random.default_rng(m + k + n + trans_a)
    a, b = _operands(rng, m, k, n, trans_a, False, np.float32)
    results = []
    for threads in (1, 2, 3):
        fb.set_num_threads(threads)
        results.append(BUILDS[level]._matmul(a, b, trans_a, False))
    for got in results[1:]:
        np.testing.assert_array_equal(got, results[0])


@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("trans_a", [False, True])
@pytest.mark.parametrize("trans_b", [False, True])
@pytest.mark.parametrize("shape", [(9, 300, 500), (64, 1100, 1000), (13, 70, 600)],
                         ids=lambda s: "x".join(map(str, s)))
def test_wide_and_narrow_panels_give_the_same_bits(level, trans_a, trans_b, shape):
    """Each element of C is summed in the same order whatever the panel width: the first n
    columns of a product over a B of 512 or more columns (wide panels in the AVX-512 build)
    are, to the bit, the product over those n columns alone (narrow panels below 512), and
    a column's sum does not depend on the columns beside it."""
    m, k, n = shape
    rng = np.random.default_rng(m + k + n + 2 * trans_a + trans_b)
    a, b = _operands(rng, m, k, 1024, trans_a, trans_b, np.float32)
    whole = BUILDS[level]._matmul(a, b, trans_a, trans_b)
    part = np.ascontiguousarray(b[:n] if trans_b else b[:, :n])
    np.testing.assert_array_equal(BUILDS[level]._matmul(a, part, trans_a, trans_b), whole[:, :n])


# (m, k, n1, n2) of a weight-gradient pair, a transposed A (δᵀ, k x m) times B1 (k x n1) and
# B2 (k x n2), as an LSTM's dW_ih and dW_hh: taken by fb_matmul_pair on one thread in every
# build (n1 + n2 <= 512, four blocks of rows or more): an LSTM at H = 128 (k past a packing
# chunk of 2048 rows and its blocks of 256), rows and both B's columns off every tile edge,
# n1 just past the narrow forms (4 transposed, 8 as stored), n1 + n2 at the limit; then
# shapes it declines, and the two products run apart: a narrow B1, too few rows, too many
# columns. The rows as stored (trans_a False) are covered too, though no layer has them.
PAIR_SHAPES = [(512, 3200, 32, 128), (520, 1001, 33, 100), (777, 2100, 9, 200),
               (800, 300, 64, 448)]
NARROW_PAIR = (512, 3200, 2, 128)     # declined where its B1 takes a narrow form
DECLINED_PAIR_SHAPES = [NARROW_PAIR, (100, 700, 32, 128), (520, 300, 256, 257)]


@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("trans_a", [True, False])
@pytest.mark.parametrize("shape", PAIR_SHAPES + DECLINED_PAIR_SHAPES,
                         ids=lambda s: "x".join(map(str, s)))
def test_matmul_pair_gives_the_bits_of_the_two_products_apart(level, trans_a, shape,
                                                              assert_close, restore_threads):
    """fb_matmul_pair, where it takes the pair (each block of A multiplied by both B's while
    in cache), gives the two products' bits as fb_matmul gives them apart, on 1, 2 and 3
    threads, and NumPy's products to the float32 tolerance; PAIR_SHAPES are taken on one
    thread, DECLINED_PAIR_SHAPES not (NARROW_PAIR where its B1 is not narrow in the build)."""
    import fastbptt as fb
    m, k, n1, n2 = shape
    rng = np.random.default_rng(m + k + n1 + n2 + trans_a)
    a = rng.standard_normal((k, m) if trans_a else (m, k)).astype(np.float32)
    b1 = rng.standard_normal((k, n1)).astype(np.float32)
    b2 = rng.standard_normal((k, n2)).astype(np.float32)
    op_a = (a.T if trans_a else a).astype(np.float64)
    kernels = BUILDS[level]
    for threads in (1, 2, 3):
        fb.set_num_threads(threads)
        c1, c2, taken = kernels._matmul_pair(a, b1, b2, trans_a)
        if threads == 1:
            narrow = any(kernels._matmul_path(np.float32, m, n, k, trans_a, False) == "own narrow"
                         for n in (n1, n2))
            assert taken == (shape in PAIR_SHAPES or (shape == NARROW_PAIR and not narrow)), \
                f"taken: {taken}"
        np.testing.assert_array_equal(c1, kernels._matmul(a, b1, trans_a, False))
        np.testing.assert_array_equal(c2, kernels._matmul(a, b2, trans_a, False))
        assert_close(c1, (op_a @ b1).astype(np.float32), np.float32, "op(a) @ b1")
        assert_close(c2, (op_a @ b2).astype(np.float32), np.float32, "op(a) @ b2")


@pytest.mark.parametrize("level", LEVELS)
def test_narrow_shapes_take_the_narrow_forms(level):
    """NARROW_SHAPES reach the narrow forms the tests above mean to cover, as far as the build
    has them (NARROW_LIMITS: k <= 4 with a as stored; n <= 8 with a as stored in the AVX-512
    build, 4 in the AVX2, none in the baseline, where the dot products measured slower;
    n <= 4 with a transposed; m <= 2 with b as stored), and one column more on the narrow
    side takes the panels."""
    path, limits = BUILDS[level]._matmul_path, BUILDS[level].NARROW_LIMITS
    assert limits == {"k": 4, "n": {"baseline": 0, "avx2": 4}.get(level, 8), "n_transposed": 4, "m": 2}
    reached = set()
    for m, k, n in NARROW_SHAPES:
        # a as stored: k narrow, n narrow, or m narrow over n of more than a vector
        form = next((f for f, hit in (("k", k <= limits["k"]), ("n", n <= limits["n"]),
                                       ("m", m <= limits["m"] and n > 16)) if hit), None)
        assert (path(np.float32, m, n, k, False) == "own narrow") == (form is not None), (m, k, n)
        reached.add(form)
    assert reached >= ({"k", "m"} if level == "baseline" else {"k", "n", "m"})
    for m, k, n in [(100, 1600, 2), (27, 90, 4), (16, 5, 1), (517, 701, 3), (1, 1600, 100),
                    (2, 300, 17), (2, 701, 530)]:
        assert path(np.float32, m, n, k, True) == "own narrow", (m, k, n)
    assert path(np.float32, 3, 100, 1600, True) == "own gemm"
    assert path(np.float32, 1, 100, 1600, True, True) == "own gemm"    # b transposed
    assert path(np.float32, 1600, 100, limits["k"] + 1) == "own gemm"
    assert path(np.float32, 1600, limits["n"] + 1, 100) == "own gemm"
    assert path(np.float32, 100, 5, 1600, True) == "own gemm"
    assert path(np.float32, 3, 2, 1600, True) == "own gemm"      # m under a vector, every build


@pytest.mark.parametrize("level", LEVELS)
def test_matmul_empty_sum(level):
    a = np.empty((4, 0), np.float32)
    b = np.empty((0, 6), np.float32)
    np.testing.assert_array_equal(BUILDS[level]._matmul(a, b), np.zeros((4, 6), np.float32))
    c = np.arange(24, dtype=np.float32).reshape(4, 6)
    np.testing.assert_array_equal(BUILDS[level]._matmul(a, b, c=c), c)


@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("shape", [(32, 128, 512), (64, 96, 100), (5, 40, 3), (200, 64, 64),
                                   (400, 100, 100), (403, 30, 40), (8, 128, 520), (13, 100, 545),
                                   (64, 256, 1024), (200, 40, 600)],
                         ids=lambda s: "x".join(map(str, s)))
def test_step_gemm_same_bits_on_any_thread_count(level, shape, assert_close):
    """A per-step product is split among threads by whole panels (or row blocks), each output
    element summed in the same order whatever the split: the result is the same to the bit on
    one thread or several, and the same to the bit as the hoisted products' own gemm
    (``_matmul``, which packs the same B as it goes: one block for k up to 1024) where that
    runs on the panels (a c of a few columns runs in a narrow form of its own)."""
    m, k, n = shape
    rng = np.random.default_rng(sum(shape))
    a = rng.standard_normal((m, k)).astype(np.float32)
    w = rng.standard_normal((n, k)).astype(np.float32)
    one = BUILDS[level]._step_gemm(a, w, 1)
    for threads in (2, 3):
        np.testing.assert_array_equal(BUILDS[level]._step_gemm(a, w, threads), one)
    if BUILDS[level]._matmul_path(np.float32, m, n, k, False, True) == "own gemm":   # not (5, 40, 3)
        np.testing.assert_array_equal(BUILDS[level]._matmul(a, w, False, True), one)
    assert_close(one, (a.astype(np.float64) @ w.T.astype(np.float64)).astype(np.float32),
                 np.float32, "a @ w.T")


@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("shape", [(9, 13, 11), (300, 200, 100)], ids=lambda s: "x".join(map(str, s)))
def test_matmul_float64_goes_to_blas(level, shape, assert_close):
    """float64, the checking dtype, runs every product on BLAS, small or large; the hook's
    BLAS route gives NumPy's product."""
    m, k, n = shape
    assert BUILDS[level]._matmul_path(np.float64, m, n, k) == "blas"
    rng = np.random.default_rng(5)
    a, b = _operands(rng, m, k, n, True, False, np.float64)
    assert_close(BUILDS[level]._matmul(a, b, True, False), a.T @ b, np.float64, "a.T @ b")


# (m, n, k): the char-RNN's smallest, one row, and the largest hoisted product of the benchmarks
@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("shape", [(1, 1, 1), (25, 65, 100), (1, 100, 100), (3200, 2048, 256)],
                         ids=lambda s: "x".join(map(str, s)))
def test_float32_products_of_every_size_run_on_own_gemm(level, shape):
    """float32 products never go to OpenBLAS, small or large: its idle pool would spin beside
    the kernels' own team."""
    assert BUILDS[level]._matmul_path(np.float32, *shape) in ("own gemm", "own narrow")


def _resident_bytes():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="needs /proc")
@pytest.mark.skipif("libasan" in os.environ.get("LD_PRELOAD", ""),
                    reason="AddressSanitizer keeps freed memory in quarantine: resident memory "
                           "does not show frees (the compiled suite runs this test)")
def test_per_thread_packing_buffers_are_freed_when_their_thread_ends():
    """The own gemm keeps each thread's packing buffers between calls; a thread that ends
    frees them: products run on 30 short-lived threads, each packing a 2 MB B, leave the
    resident memory where it was (kept, they would add 60 MB)."""
    import threading
    level = LEVELS[-1]
    rng = np.random.default_rng(0)
    a = rng.standard_normal((64, 1024)).astype(np.float32)
    b = rng.standard_normal((1024, 512)).astype(np.float32)
    expected = BUILDS[level]._matmul(a, b)

    def product(out, i):
        out[i] = BUILDS[level]._matmul(a, b)

    results = [None] * 30
    worker = threading.Thread(target=product, args=(results, 0))
    worker.start()
    worker.join()
    before = _resident_bytes()
    for i in range(1, 30):
        worker = threading.Thread(target=product, args=(results, i))
        worker.start()
        worker.join()
    grown = _resident_bytes() - before
    for got in results:
        np.testing.assert_array_equal(got, expected)
    assert grown < 25 * 1024 * 1024, f"resident memory grew by {grown / 2**20:.1f} MB"
