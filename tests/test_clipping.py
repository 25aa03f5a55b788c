"""Clipping: per-step clipping of δ_t inside backward, and whole-gradient clipping in place."""
import math

import numpy as np
import pytest

import fastbptt as fb


def _setup(backend, dtype, B=5, T=8, num_layers=2, output_size=3, seed=0):
    model = fb.RNN(4, 6, num_layers=num_layers, output_size=output_size, dtype=dtype.name, seed=seed,
                   backend=backend)
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((T, B, 4)).astype(dtype)
    h0 = rng.uniform(-0.5, 0.5, (num_layers, B, 6)).astype(dtype)
    # rows of very different sizes, so a clip cuts some rows and not others
    scale = np.geomspace(0.05, 20, B)[None, :, None]
    d_out = (rng.standard_normal((T, B, output_size or 6)) * scale).astype(dtype)
    d_h_n = (rng.standard_normal((num_layers, B, 6)) * scale).astype(dtype)
    return model, x, h0, d_out, d_h_n


# --------------------------------------------------------------------------- per-step clipping


@pytest.mark.parametrize("clip_step", [0.3, 2.0])
def test_a_clipped_batch_equals_its_rows_one_by_one(backend, dtype, assert_close, tol, clip_step):
    model, x, h0, d_out, d_h_n = _setup(backend, dtype)
    B = x.shape[1]
    model.forward(x, h0)
    batch = model.backward(d_out, d_h_n, clip_step=clip_step, step_norms=True)
    free = model.backward(d_out, d_h_n, step_norms=True)
    # the clip acts (and a batch-wide rescaling would not give the per-row result below)
    assert not np.allclose(batch.params["weight_hh_l0"], free.params["weight_hh_l0"], **tol(dtype, "effect"))
    rows = []
    for b in range(B):
        model.forward(x[:, b:b + 1], h0[:, b:b + 1])
        rows.append(model.backward(d_out[:, b:b + 1], d_h_n[:, b:b + 1], clip_step=clip_step, step_norms=True))
    for name in batch.params:
        summed = sum(r.params[name].astype(np.float64) for r in rows)
        assert_close(batch.params[name], summed, dtype, name)
    assert_close(batch.x, np.concatenate([r.x for r in rows], axis=1), dtype, "g.x")
    assert_close(batch.h0, np.concatenate([r.h0 for r in rows], axis=1), dtype, "g.h0")
    assert_close(batch.step_norms, np.concatenate([r.step_norms for r in rows], axis=2), dtype, "step_norms")


def test_a_huge_clip_step_is_no_clip(backend, dtype):
    model, x, h0, d_out, d_h_n = _setup(backend, dtype)
    model.forward(x, h0)
    free = model.backward(d_out, d_h_n)
    huge = model.backward(d_out, d_h_n, clip_step=1e30)
    for name in free.params:
        np.testing.assert_array_equal(huge.params[name], free.params[name], err_msg=name)
    np.testing.assert_array_equal(huge.x, free.x)
    np.testing.assert_array_equal(huge.h0, free.h0)


@pytest.mark.parametrize("clip_step", [1e-6, 1e-3, 0.05])
def test_a_small_clip_step_bounds_the_gradients(backend, dtype, math_tol, clip_step):
    # One layer, no readout: db = Σ_t Σ_b δ_t and each ‖δ_t row‖ <= clip_step, so
    # ‖db‖ <= T·B·clip_step; dx_t = δ_t W_ih, so ‖dx_t row‖ <= clip_step·‖W_ih‖₂.
    model, x, h0, d_out, d_h_n = _setup(backend, dtype, num_layers=1, output_size=None)
    T, B, _ = x.shape
    model.forward(x, h0)
    free = model.backward(d_out, d_h_n)
    g = model.backward(d_out, d_h_n, clip_step=clip_step)
    slack = 1 + math_tol(dtype)["rtol"]
    assert np.linalg.norm(g.params["bias_ih_l0"].astype(np.float64)) <= T * B * clip_step * slack
    w_norm = np.linalg.norm(model.params["weight_ih_l0"].astype(np.float64), 2)
    assert np.linalg.norm(g.x.astype(np.float64), axis=2).max() <= clip_step * w_norm * slack
    assert np.linalg.norm(free.params["bias_ih_l0"]) > 10 * T * B * clip_step  # it did clip
    assert not np.allclose(g.params["weight_hh_l0"], free.params["weight_hh_l0"])


def test_clip_step_at_one_step_by_hand(backend, dtype, assert_close_to_math):
    # T = 1, one layer, no readout: δ = clip_rows((d_out + d_h_n) ⊙ (1 - s²)), db = Σ_b δ.
    model, x, h0, d_out, d_h_n = _setup(backend, dtype, T=1, num_layers=1, output_size=None)
    out, _ = model.forward(x, h0)
    s = out[0].astype(np.float64)
    delta = (d_out[0].astype(np.float64) + d_h_n[0]) * (1 - s * s)
    norms = np.linalg.norm(delta, axis=1)
    clip = float(np.median(norms))
    assert (norms > clip).any() and (norms < clip).any()
    clipped = delta * np.minimum(1, clip / norms)[:, None]
    g = model.backward(d_out, d_h_n, clip_step=clip)
    assert_close_to_math(g.params["bias_hh_l0"], clipped.sum(axis=0), dtype, "db")
    assert_close_to_math(g.h0[0], clipped @ model.params["weight_hh_l0"].astype(np.float64), dtype, "dh0")


# --------------------------------------------------------------------------- clip_grad_norm


def _grads(dtype, seed=0, scale=1.0):
    rng = np.random.default_rng(seed)
    shapes = {"weight_ih_l0": (6, 4), "weight_hh_l0": (6, 6), "bias_ih_l0": (6,), "bias_out": (2,)}
    return {k: (rng.standard_normal(s) * scale).astype(dtype) for k, s in shapes.items()}


def _joint_norm(arrays):
    return math.sqrt(math.fsum(float(v) ** 2 for a in arrays for v in np.asarray(a, np.float64).ravel()))


@pytest.mark.parametrize("as_list", [False, True], ids=["dict", "list"])
def test_clip_grad_norm_scales_to_max_norm(dtype, math_tol, assert_close_to_math, as_list):
    grads = _grads(dtype)
    before = {k: v.copy() for k, v in grads.items()}
    objects = {k: id(v) for k, v in grads.items()}
    total = _joint_norm(before.values())
    max_norm = total / 3
    returned = fb.clip_grad_norm(list(grads.values()) if as_list else grads, max_norm)
    rel = math_tol(dtype)["rtol"]
    assert returned == pytest.approx(total, rel=rel)
    assert _joint_norm(grads.values()) == pytest.approx(max_norm, rel=rel)
    for k, v in grads.items():
        assert id(v) == objects[k]  # in place
        # the same direction: every array scaled by the same factor
        assert_close_to_math(v, before[k].astype(np.float64) * (max_norm / total), dtype, k)


def test_clip_grad_norm_below_the_max_changes_nothing(dtype, math_tol):
    grads = _grads(dtype, seed=1)
    before = {k: v.copy() for k, v in grads.items()}
    total = _joint_norm(before.values())
    for max_norm in (total * 1.5, total * 1000):
        assert fb.clip_grad_norm(grads, max_norm) == pytest.approx(total, rel=math_tol(dtype)["rtol"])
        for k in grads:
            np.testing.assert_array_equal(grads[k], before[k])


def test_clip_grad_norm_of_model_gradients(backend, dtype, math_tol):
    model, x, h0, d_out, d_h_n = _setup(backend, dtype)
    model.forward(x, h0)
    g = model.backward(d_out, d_h_n)
    total = _joint_norm(g.params.values())
    rel = math_tol(dtype)["rtol"]
    assert fb.clip_grad_norm(g.params, total / 10) == pytest.approx(total, rel=rel)
    # bias_ih and bias_hh get the same gradient: if they were one array it would be scaled twice
    assert _joint_norm(g.params.values()) == pytest.approx(total / 10, rel=rel)


def test_clip_grad_norm_does_not_overflow_in_float32(math_tol):
    grads = {"a": np.full(4, 1e30, np.float32), "b": np.full(3, -1e30, np.float32)}
    total = fb.clip_grad_norm(grads, 1.0)
    rel = math_tol(np.float32)["rtol"]
    assert total == pytest.approx(math.sqrt(7) * 1e30, rel=rel)
    assert _joint_norm(grads.values()) == pytest.approx(1.0, rel=rel)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_clip_grad_norm_with_a_non_finite_gradient_scales_nothing(bad):
    grads = _grads(np.float64, seed=2)
    grads["bias_out"][1] = bad
    before = {k: v.copy() for k, v in grads.items()}
    total = fb.clip_grad_norm(grads, 0.1)
    assert not math.isfinite(total)
    for k in grads:
        np.testing.assert_array_equal(grads[k], before[k])


# --------------------------------------------------------------------------- clip_grad_value


@pytest.mark.parametrize("as_list", [False, True], ids=["dict", "list"])
def test_clip_grad_value(dtype, as_list):
    grads = _grads(dtype, seed=3, scale=2.0)
    before = {k: v.copy() for k, v in grads.items()}
    value = 1.5
    big = sum(int((np.abs(v) > value).sum()) for v in before.values())
    assert big > 5  # some elements are clipped ...
    assert fb.clip_grad_value(list(grads.values()) if as_list else grads, value) is None
    for k, v in grads.items():
        b = before[k]
        assert v.dtype == dtype
        assert (np.abs(v) <= value).all(), k
        small = np.abs(b) <= value
        np.testing.assert_array_equal(v[small], b[small])  # ... and the rest are untouched
        np.testing.assert_array_equal(v[~small], np.sign(b[~small]) * dtype.type(value))


# --------------------------------------------------------------------------- bad arguments


@pytest.mark.parametrize("func,arg", [(fb.clip_grad_norm, "max_norm"), (fb.clip_grad_value, "value")])
@pytest.mark.parametrize("bad,error", [
    (0, ValueError), (-1.0, ValueError), (np.nan, ValueError), (np.inf, ValueError),
    ("1", TypeError), (None, TypeError), (True, TypeError),
])
def test_bad_threshold_raises(func, arg, bad, error):
    grads = _grads(np.float32)
    before = {k: v.copy() for k, v in grads.items()}
    with pytest.raises(error, match=arg):
        func(grads, bad)
    for k in grads:
        np.testing.assert_array_equal(grads[k], before[k])


@pytest.mark.parametrize("func", [fb.clip_grad_norm, fb.clip_grad_value])
def test_bad_gradients_raise(func):
    with pytest.raises(TypeError, match="grads"):
        func({"a": np.ones(3, np.int64)}, 1.0)
    with pytest.raises(TypeError, match="grads"):
        func({"a": [1.0, 2.0]}, 1.0)
    frozen = np.ones(3)
    frozen.flags.writeable = False
    with pytest.raises(ValueError, match="read-only"):
        func([np.ones(2), frozen], 0.5)
