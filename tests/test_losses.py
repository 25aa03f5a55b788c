"""Losses: summed over time steps, averaged over the batch; d_out is the exact derivative."""
import math

import numpy as np
import pytest

import fastbptt as fb

SHAPES = [(1, 1, 1), (4, 3, 2), (7, 1, 5), (1, 6, 3)]


def _fd_gradient(loss, out, eps):
    """∂loss(out)/∂out by central differences, every entry (float64)."""
    grad = np.empty_like(out)
    for i in np.ndindex(out.shape):
        saved = out[i]
        out[i] = saved + eps
        up = loss(out)
        out[i] = saved - eps
        down = loss(out)
        out[i] = saved
        grad[i] = (up - down) / (2 * eps)
    return grad


def _mse_by_hand(out, target):
    T, B, _ = out.shape
    return math.fsum(float(out[t, b, o] - target[t, b, o]) ** 2 for t, b, o in np.ndindex(out.shape)) / B


def _cross_entropy_by_hand(logits, labels):
    T, B, C = logits.shape
    total = 0.0
    for t in range(T):
        for b in range(B):
            row = [float(v) for v in logits[t, b]]
            m = max(row)
            log_z = m + math.log(math.fsum(math.exp(v - m) for v in row))
            total += log_z - row[labels[t, b]]
    return total / B


# --------------------------------------------------------------------------- mse


@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_mse_matches_a_direct_computation(dtype, shape, rng, math_tol, assert_close_to_math):
    out = rng.standard_normal(shape).astype(dtype)
    target = rng.standard_normal(shape).astype(dtype)
    loss, d_out = fb.losses.mse(out, target)
    assert isinstance(loss, float)
    assert loss == pytest.approx(_mse_by_hand(out, target), rel=math_tol(dtype)["rtol"])
    assert_close_to_math(d_out, 2 * (out.astype(np.float64) - target) / shape[1], dtype, "d_out")


@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_mse_d_out_equals_finite_differences(shape, rng, fd):
    out = rng.standard_normal(shape)
    target = rng.standard_normal(shape)
    _, d_out = fb.losses.mse(out, target)
    numeric = _fd_gradient(lambda o: fb.losses.mse(o, target)[0], out, fd["eps"])
    np.testing.assert_allclose(d_out, numeric, rtol=fd["rtol"], atol=fd["atol"])


def test_mse_sums_over_time_and_averages_over_the_batch(rng, math_tol):
    out, target = rng.standard_normal((5, 3, 2)), rng.standard_normal((5, 3, 2))
    loss, _ = fb.losses.mse(out, target)
    twice_as_long, _ = fb.losses.mse(np.concatenate([out, out]), np.concatenate([target, target]))
    twice_the_batch, _ = fb.losses.mse(np.concatenate([out, out], 1), np.concatenate([target, target], 1))
    assert twice_as_long == pytest.approx(2 * loss, rel=math_tol(np.float64)["rtol"])
    assert twice_the_batch == pytest.approx(loss, rel=math_tol(np.float64)["rtol"])


def test_mse_last_step(dtype, rng, fd, math_tol, assert_close_to_math):
    out = rng.standard_normal((6, 4, 3)).astype(dtype)
    target = rng.standard_normal((4, 3)).astype(dtype)
    loss, d_out = fb.losses.mse(out, target, last_step=True)
    assert loss == pytest.approx(_mse_by_hand(out[-1:], target[None]), rel=math_tol(dtype)["rtol"])
    assert d_out.shape == out.shape and d_out.dtype == dtype
    np.testing.assert_array_equal(d_out[:-1], 0)
    assert_close_to_math(d_out[-1], 2 * (out[-1].astype(np.float64) - target) / 4, dtype, "d_out[-1]")
    out64, target64 = out.astype(np.float64), target.astype(np.float64)
    numeric = _fd_gradient(lambda o: fb.losses.mse(o, target64, last_step=True)[0], out64, fd["eps"])
    np.testing.assert_allclose(fb.losses.mse(out64, target64, last_step=True)[1], numeric,
                               rtol=fd["rtol"], atol=fd["atol"])


def test_mse_accepts_an_integer_target(rng, math_tol):
    out = rng.standard_normal((3, 2, 2)).astype(np.float32)
    target = rng.integers(-2, 3, (3, 2, 2))
    loss, d_out = fb.losses.mse(out, target)
    assert loss == pytest.approx(_mse_by_hand(out, target), rel=math_tol(np.float32)["rtol"])
    assert d_out.dtype == np.float32


def test_mse_inputs_are_not_modified(rng):
    out, target = rng.standard_normal((3, 2, 2)), rng.standard_normal((3, 2, 2))
    copies = out.copy(), target.copy()
    fb.losses.mse(out, target)
    np.testing.assert_array_equal(out, copies[0])
    np.testing.assert_array_equal(target, copies[1])


# --------------------------------------------------------------------------- cross-entropy


@pytest.mark.parametrize("shape", SHAPES + [(3, 2, 10)], ids=str)
def test_cross_entropy_matches_a_direct_computation(dtype, shape, rng, math_tol, assert_close_to_math):
    logits = (3 * rng.standard_normal(shape)).astype(dtype)
    labels = rng.integers(0, shape[2], shape[:2])
    loss, d_out = fb.losses.cross_entropy(logits, labels)
    t = math_tol(dtype)
    assert isinstance(loss, float)
    assert loss == pytest.approx(_cross_entropy_by_hand(logits, labels), rel=t["rtol"], abs=t["atol"])
    # softmax minus one-hot, over the batch size
    z = logits.astype(np.float64)
    p = np.exp(z - z.max(axis=2, keepdims=True))
    p /= p.sum(axis=2, keepdims=True)
    p[np.arange(shape[0])[:, None], np.arange(shape[1])[None, :], labels] -= 1
    assert_close_to_math(d_out, p / shape[1], dtype, "d_out")
    # each row of the gradient sums to zero
    np.testing.assert_allclose(d_out.astype(np.float64).sum(axis=2), 0, atol=shape[2] * t["atol"])


@pytest.mark.parametrize("shape", SHAPES + [(3, 2, 10)], ids=str)
def test_cross_entropy_d_out_equals_finite_differences(shape, rng, fd):
    logits = 2 * rng.standard_normal(shape)
    labels = rng.integers(0, shape[2], shape[:2])
    _, d_out = fb.losses.cross_entropy(logits, labels)
    numeric = _fd_gradient(lambda o: fb.losses.cross_entropy(o, labels)[0], logits, fd["eps"])
    np.testing.assert_allclose(d_out, numeric, rtol=fd["rtol"], atol=fd["atol"])


def test_cross_entropy_is_stable_for_large_logits(dtype, math_tol):
    logits = np.array([[[1000.0, 0.0, -1000.0], [-500.0, 500.0, 499.0]]], dtype)
    labels = np.array([[0, 2]])
    loss, d_out = fb.losses.cross_entropy(logits, labels)
    # row 0: log-sum-exp = 1000, -log p = 0; row 1: -log p = 500 + log(1 + e^-1) - 499
    expected = (0.0 + 1.0 + math.log1p(math.exp(-1.0))) / 2
    assert loss == pytest.approx(expected, rel=math_tol(dtype)["rtol"])
    assert np.isfinite(d_out).all()


def test_cross_entropy_last_step(dtype, rng, fd, math_tol):
    logits = rng.standard_normal((5, 3, 4)).astype(dtype)
    labels = rng.integers(0, 4, 3)
    loss, d_out = fb.losses.cross_entropy(logits, labels, last_step=True)
    assert loss == pytest.approx(_cross_entropy_by_hand(logits[-1:], labels[None]), rel=math_tol(dtype)["rtol"])
    np.testing.assert_array_equal(d_out[:-1], 0)
    assert d_out.dtype == dtype
    z = logits.astype(np.float64)
    numeric = _fd_gradient(lambda o: fb.losses.cross_entropy(o, labels, last_step=True)[0], z, fd["eps"])
    np.testing.assert_allclose(fb.losses.cross_entropy(z, labels, last_step=True)[1], numeric,
                               rtol=fd["rtol"], atol=fd["atol"])


def test_cross_entropy_accepts_any_integer_label_dtype(rng):
    logits = rng.standard_normal((2, 3, 4))
    labels = rng.integers(0, 4, (2, 3))
    expected = fb.losses.cross_entropy(logits, labels)[0]
    for dt in (np.int8, np.uint8, np.int32, np.uint64):
        assert fb.losses.cross_entropy(logits, labels.astype(dt))[0] == expected


# --------------------------------------------------------------------------- bad input


OUT = np.zeros((3, 2, 4))
GOOD_LABELS = np.zeros((3, 2), np.int64)


def _nan_at(a, index, value=np.nan):
    a = a.copy()
    a[index] = value
    return a


BAD_MSE = [
    ("out-list", OUT.tolist(), OUT, {}, TypeError, "out must be a numpy.ndarray, got list"),
    ("out-int", np.zeros((3, 2, 4), np.int32), OUT, {}, TypeError, "out must have dtype float32 or float64, got int32"),
    ("out-2d", OUT[0], OUT[0], {}, ValueError, r"out must have shape \(T, B, O\), got \(2, 4\)"),
    ("out-empty", np.zeros((0, 2, 4)), np.zeros((0, 2, 4)), {}, ValueError, r"out must not be empty, got shape \(0, 2, 4\)"),
    ("out-nan", _nan_at(OUT, (1, 1, 1)), OUT, {}, ValueError, "out contains NaN"),
    ("out-inf", _nan_at(OUT, (0, 0, 0), np.inf), OUT, {}, ValueError, "out contains NaN"),
    ("target-shape", OUT, np.zeros((3, 2, 3)), {}, ValueError, r"target must have shape \(3, 2, 4\), got \(3, 2, 3\)"),
    ("target-last-step", OUT, OUT, dict(last_step=True), ValueError, r"target must have shape \(2, 4\)"),
    ("target-list", OUT, OUT.tolist(), {}, TypeError, "target must be a numpy.ndarray of real numbers"),
    ("target-str", OUT, np.full((3, 2, 4), "a"), {}, TypeError, "target must be a numpy.ndarray of real numbers"),
    ("target-nan", OUT, _nan_at(OUT, (2, 1, 3)), {}, ValueError, "target contains NaN"),
    ("target-inf", OUT, _nan_at(OUT, (2, 0, 0), -np.inf), {}, ValueError, "target contains NaN"),
]


@pytest.mark.parametrize("case,out,target,kw,error,match", BAD_MSE, ids=[c[0] for c in BAD_MSE])
def test_mse_bad_input(case, out, target, kw, error, match):
    with pytest.raises(error, match=match):
        fb.losses.mse(out, target, **kw)


BAD_CE = [
    ("logits-int", np.zeros((3, 2, 4), np.int64), GOOD_LABELS, {}, TypeError, "logits must have dtype float32 or float64, got int64"),
    ("logits-2d", OUT[0], GOOD_LABELS, {}, ValueError, r"logits must have shape \(T, B, C\), got \(2, 4\)"),
    ("logits-nan", _nan_at(OUT, (2, 1, 0)), GOOD_LABELS, {}, ValueError, "logits contains NaN"),
    ("labels-float", OUT, GOOD_LABELS.astype(np.float64), {}, TypeError, "labels must have an integer dtype, got float64"),
    ("labels-bool", OUT, GOOD_LABELS.astype(bool), {}, TypeError, "labels must have an integer dtype, got bool"),
    ("labels-list", OUT, GOOD_LABELS.tolist(), {}, TypeError, "labels must be a numpy.ndarray"),
    ("labels-shape", OUT, np.zeros((2, 3), np.int64), {}, ValueError, r"labels must have shape \(3, 2\), got \(2, 3\)"),
    ("labels-last-step", OUT, GOOD_LABELS, dict(last_step=True), ValueError, r"labels must have shape \(2\), got \(3, 2\)"),
    ("labels-negative", OUT, _nan_at(GOOD_LABELS, (1, 1), -1), {}, ValueError, r"labels must lie in \[0, 4\)"),
    ("labels-too-big", OUT, _nan_at(GOOD_LABELS, (2, 0), 4), {}, ValueError, r"labels must lie in \[0, 4\)"),
]


@pytest.mark.parametrize("case,logits,labels,kw,error,match", BAD_CE, ids=[c[0] for c in BAD_CE])
def test_cross_entropy_bad_input(case, logits, labels, kw, error, match):
    with pytest.raises(error, match=match):
        fb.losses.cross_entropy(logits, labels, **kw)
