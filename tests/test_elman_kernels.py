"""The compiled layer kernels against the NumPy oracle (``_reference.py``), function by function.

Both dtypes, tanh and relu, seeded random shapes including T=1, B=1, I=1 and I != H, on both
sides of the compiled kernels' small-product threshold (B·H·H = 32768). These tests compare
results only; which product path a shape takes is forced and checked in ``test_paths.py``.
"""
import warnings

import numpy as np
import pytest

from fastbptt import _backend, _reference

# (T, B, I, H): edge cases first, then shapes drawn once from a fixed seed.
EDGE_SHAPES = [
    (1, 1, 1, 1),
    (1, 1, 3, 5),      # T = 1, B = 1
    (1, 6, 4, 2),      # T = 1
    (9, 1, 1, 7),      # B = 1, I = 1
    (5, 3, 8, 3),      # I > H
    (40, 2, 3, 12),    # tens of steps
    (6, 9, 5, 64),     # B·H·H = 36864: above the small-product threshold
    (4, 1, 65, 100),   # a char-RNN step: B = 1, H = 100, small-product loop
]
_draw = np.random.default_rng(20240611)
RANDOM_SHAPES = [tuple(int(v) for v in (_draw.integers(1, 31), _draw.integers(1, 8),
                                         _draw.integers(1, 12), _draw.integers(1, 40)))
                 for _ in range(6)]
SHAPES = EDGE_SHAPES + RANDOM_SHAPES
SHAPE_IDS = ["T{}-B{}-I{}-H{}".format(*s) for s in SHAPES]

GRAD_NAMES = ("dx", "dh0", "dw_ih", "dw_hh", "db")


def _seed(shape, *extra):
    return np.random.default_rng([*shape, *(int(e) for e in extra)])


@pytest.fixture
def kernels(backend):
    """The kernel module of each backend (the oracle itself for 'numpy')."""
    return _backend.resolve(backend)[1]


@pytest.fixture(params=[False, True], ids=["tanh", "relu"])
def relu(request):
    return request.param


def _cell(relu):
    return "relu" if relu else "tanh"


def _delta_last_step_norms(p, hs, relu):
    """‖δ_T‖ of each row, computed from the equations: (d_out[T-1] + dh_n) ⊙ f'(s_T)."""
    s = hs[-1].astype(np.float64)
    deriv = (s > 0).astype(np.float64) if relu else 1 - s * s
    delta = (p["d_out"][-1].astype(np.float64) + p["dh_n"]) * deriv
    return np.sqrt((delta * delta).sum(axis=1))


# --------------------------------------------------------------------------- forward


@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
def test_forward_matches_oracle(compiled_kernels, layer_arrays, assert_close, shape, dtype, relu):
    p = layer_arrays(_seed(shape, relu), _cell(relu), *shape, dtype)
    args = (p["x"], p["h0"], p["w_ih"], p["w_hh"], p["b_ih"], p["b_hh"], relu)
    expected = _reference.elman_forward(*args)
    hs = compiled_kernels.elman_forward(*args)
    T, B, _, H = shape
    assert hs.shape == (T + 1, B, H)
    assert hs.flags.c_contiguous
    np.testing.assert_array_equal(hs[0], p["h0"])  # hs[0] is h0, copied exactly
    assert_close(hs, expected, dtype, "hs")
    if relu:
        assert (hs[1:] >= 0).all()
    else:
        assert (np.abs(hs[1:]) <= 1).all()


def test_forward_oracle_follows_the_equations(layer_arrays, assert_close_to_math, dtype, relu):
    # The oracle itself against the cell equation written out step by step in float64.
    p = layer_arrays(np.random.default_rng(3), _cell(relu), 7, 4, 5, 6, dtype)
    hs = _reference.elman_forward(p["x"], p["h0"], p["w_ih"], p["w_hh"], p["b_ih"], p["b_hh"], relu)
    q = {k: v.astype(np.float64) for k, v in p.items()}
    s = q["h0"]
    for t in range(7):
        pre = q["x"][t] @ q["w_ih"].T + q["b_ih"] + s @ q["w_hh"].T + q["b_hh"]
        s = np.maximum(pre, 0) if relu else np.tanh(pre)
        assert_close_to_math(hs[t + 1], s, dtype, f"s_{t + 1}")


# --------------------------------------------------------------------------- backward


@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
@pytest.mark.parametrize("with_dh_n", [False, True], ids=["no_dh_n", "dh_n"])
def test_backward_matches_oracle(compiled_kernels, layer_arrays, assert_close, shape, dtype, relu, with_dh_n):
    p = layer_arrays(_seed(shape, relu, with_dh_n, 1), _cell(relu), *shape, dtype)
    hs = _reference.elman_forward(p["x"], p["h0"], p["w_ih"], p["w_hh"], p["b_ih"], p["b_hh"], relu)
    dh_n = p["dh_n"] if with_dh_n else None
    args = (p["d_out"], dh_n, p["x"], hs, p["w_ih"], p["w_hh"], relu)
    expected = _reference.elman_backward(*args)
    got = compiled_kernels.elman_backward(*args)
    assert len(got) == 5
    for name, a, e in zip(GRAD_NAMES, got, expected):
        assert_close(a, e, dtype, name)
    T, B, I, H = shape
    assert [g.shape for g in got] == [(T, B, I), (B, H), (H, I), (H, H), (H,)]


@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
def test_backward_with_clip_step_matches_oracle(compiled_kernels, layer_arrays, assert_close, tol, shape, dtype,
                                                relu):
    p = layer_arrays(_seed(shape, relu, 2), _cell(relu), *shape, dtype)
    hs = _reference.elman_forward(p["x"], p["h0"], p["w_ih"], p["w_hh"], p["b_ih"], p["b_hh"], relu)
    # Half the rows' δ_T (at least one) are above the clip: the clip does act.
    norms = _delta_last_step_norms(p, hs, relu)
    clip = 0.5 * float(np.median(norms))
    assert clip > 0 and (norms > clip).any()
    args = (p["d_out"], p["dh_n"], p["x"], hs, p["w_ih"], p["w_hh"], relu)
    unclipped = _reference.elman_backward(*args)
    expected = _reference.elman_backward(*args, clip)
    got = compiled_kernels.elman_backward(*args, clip)
    for name, a, e in zip(GRAD_NAMES, got, expected):
        assert_close(a, e, dtype, name)
    # ... and it changed the gradients, well beyond the tolerance
    assert not np.allclose(expected[4], unclipped[4], **tol(dtype, "effect"))


def test_clip_step_bounds_every_delta(kernels, layer_arrays, assert_close_to_math, dtype):
    # With T = 1 and B = 1, db is δ_1 itself: its norm is exactly the clip, and the
    # direction is that of the unclipped δ.
    p = layer_arrays(np.random.default_rng(11), "tanh", 1, 1, 4, 9, dtype)
    hs = _reference.elman_forward(p["x"], p["h0"], p["w_ih"], p["w_hh"], p["b_ih"], p["b_hh"], False)
    args = (p["d_out"], p["dh_n"], p["x"], hs, p["w_ih"], p["w_hh"], False)
    free = _reference.elman_backward(*args)[4].astype(np.float64)
    clip = 0.25 * np.linalg.norm(free)
    db = kernels.elman_backward(*args, clip)[4]
    assert_close_to_math(np.linalg.norm(db, keepdims=True), [clip], dtype, "‖db‖")
    assert_close_to_math(db, free * (clip / np.linalg.norm(free)), dtype, "db")


@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
@pytest.mark.parametrize("clip", [None, 0.3], ids=["noclip", "clip"])
def test_step_norms_match_oracle(compiled_kernels, layer_arrays, assert_close, assert_close_to_math, shape, dtype,
                                relu, clip):
    T, B, _, _ = shape
    p = layer_arrays(_seed(shape, relu, 3), _cell(relu), *shape, dtype)
    hs = _reference.elman_forward(p["x"], p["h0"], p["w_ih"], p["w_hh"], p["b_ih"], p["b_hh"], relu)
    args = (p["d_out"], p["dh_n"], p["x"], hs, p["w_ih"], p["w_hh"], relu, clip)
    expected = np.full((T, B), np.nan, dtype)
    got = np.full((T, B), np.nan, dtype)
    ref_grads = _reference.elman_backward(*args, expected)
    grads = compiled_kernels.elman_backward(*args, got)
    assert_close(got, expected, dtype, "step_norms")
    # the last step's norm is that of d_out[T-1] + dh_n, from first principles
    last = np.linalg.norm(p["d_out"][-1].astype(np.float64) + p["dh_n"], axis=1)
    assert_close_to_math(got[-1], last, dtype, "step_norms[T-1]")
    # asking for the norms does not change the gradients
    for name, a, e in zip(GRAD_NAMES, grads, ref_grads):
        assert_close(a, e, dtype, name)


def test_kernels_do_not_modify_their_inputs(kernels, layer_arrays, dtype, relu):
    p = layer_arrays(np.random.default_rng(5), _cell(relu), 6, 3, 4, 5, dtype)
    before = {k: v.copy() for k, v in p.items()}
    hs = kernels.elman_forward(p["x"], p["h0"], p["w_ih"], p["w_hh"], p["b_ih"], p["b_hh"], relu)
    hs_before = hs.copy()
    norms = np.empty((6, 3), dtype)
    kernels.elman_backward(p["d_out"], p["dh_n"], p["x"], hs, p["w_ih"], p["w_hh"], relu, 0.1, norms)
    for k in p:
        np.testing.assert_array_equal(p[k], before[k], err_msg=k)
    np.testing.assert_array_equal(hs, hs_before)


def test_kernels_return_a_nan_product_without_a_warning(kernels, dtype, relu):
    """0 · inf in dx = δ W_ih: both backends return the NaN and raise no warning.

    NumPy turns the floating-point "invalid" flag into a RuntimeWarning after a product, and
    OpenBLAS can set that flag on finite operands whose product holds no NaN, so the oracle
    ignores the flag (as the compiled kernels, which never warn, do); non-finite results are
    the caller's to check (the training loop does). pytest turns fastbptt's RuntimeWarnings
    into errors, and so does this test.
    """
    T, B, I, H = 3, 2, 4, 5
    rng = np.random.default_rng(11)
    x = rng.standard_normal((T, B, I)).astype(dtype)
    w_ih = rng.standard_normal((H, I)).astype(dtype)
    w_ih[1, 2] = np.inf
    w_hh = rng.standard_normal((H, H)).astype(dtype)
    hs = np.tanh(rng.standard_normal((T + 1, B, H))).astype(dtype)
    d_out = np.zeros((T, B, H), dtype)                  # δ = 0 at every step, so dx = 0 · W_ih
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        dx = kernels.elman_backward(d_out, None, x, hs, w_ih, w_hh, relu)[0]
    assert np.isnan(dx[..., 2]).all(), "0 · inf should be NaN in dx's third column"
    np.testing.assert_array_equal(np.delete(dx, 2, axis=2), 0)


# --------------------------------------------------------------------------- linear readout


LINEAR_SHAPES = [(1, 1, 1), (1, 5, 3), (7, 1, 4), (12, 9, 1), (60, 33, 17)]


@pytest.mark.parametrize("shape", LINEAR_SHAPES, ids=["M{}-K{}-N{}".format(*s) for s in LINEAR_SHAPES])
def test_linear_matches_oracle(compiled_kernels, assert_close, assert_close_to_math, shape, dtype):
    M, K, N = shape
    rng = np.random.default_rng(shape)
    x = rng.standard_normal((M, K)).astype(dtype)
    w = rng.standard_normal((N, K)).astype(dtype)
    b = rng.standard_normal(N).astype(dtype)
    dy = rng.standard_normal((M, N)).astype(dtype)
    y = compiled_kernels.linear_forward(x, w, b)
    assert_close(y, _reference.linear_forward(x, w, b), dtype, "y")
    got = compiled_kernels.linear_backward(dy, x, w)
    expected = _reference.linear_backward(dy, x, w)
    for name, a, e in zip(("dx", "dw", "db"), got, expected):
        assert_close(a, e, dtype, name)
    # and the oracle against the math, in float64
    x64, w64, dy64 = (a.astype(np.float64) for a in (x, w, dy))
    assert_close_to_math(y, x64 @ w64.T + b, dtype, "y (math)")
    assert_close_to_math(expected[0], dy64 @ w64, dtype, "dx (math)")
    assert_close_to_math(expected[1], np.einsum("mn,mk->nk", dy64, x64), dtype, "dw (math)")
    assert_close_to_math(expected[2], dy64.sum(axis=0), dtype, "db (math)")


# --------------------------------------------------------------------------- all_finite


def _all_finite_cases(dtype):
    cases = []
    for shape in [(1,), (7,), (3, 5), (2, 3, 4), (4095,), (4096,), (4097,), (10000,), (3, 4000)]:
        n = int(np.prod(shape))
        base = np.random.default_rng(n).standard_normal(shape).astype(dtype)
        cases.append((f"clean{shape}", base, True))
        positions = sorted({0, n // 2, n - 1, min(4095, n - 1), min(4096, n - 1), min(8191, n - 1)})
        for bad in (np.nan, np.inf, -np.inf):
            for pos in positions:
                a = base.copy()
                a.reshape(-1)[pos] = bad
                cases.append((f"{bad}@{pos}{shape}", a, False))
    info = np.finfo(dtype)
    special = np.array([0.0, -0.0, info.max, -info.max, info.tiny, info.tiny / 4, -info.eps], dtype)
    cases.append(("extremes", special, True))
    cases.append(("all_nan", np.full(5000, np.nan, dtype), False))
    both = np.zeros(9000, dtype)
    both[[10, 8999]] = [np.inf, np.nan]
    cases.append(("inf_and_nan", both, False))
    return cases


def test_all_finite(kernels, dtype):
    cases = _all_finite_cases(dtype)
    assert sum(not want for _, _, want in cases) > 90
    results = {name: kernels.all_finite(a) for name, a, _ in cases}
    wrong = [f"{name}: {results[name]!r}" for name, _, want in cases if results[name] is not want]
    assert not wrong, f"all_finite wrong on {wrong}"
