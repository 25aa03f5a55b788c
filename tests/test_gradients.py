"""Backward passes against central finite differences, in float64, on random inputs.

The layer kernels of each backend (the NumPy oracle and the compiled kernels) are checked
entry by entry with this file's own central-difference helper; the model is checked both with
that helper and with ``fb.gradcheck``, which is itself shown to fail on a wrong backward.
"""
import re

import numpy as np
import pytest

import fastbptt as fb
from fastbptt import _backend


def central_difference(loss, array, eps):
    """∂loss()/∂array, every entry, by central differences; ``loss`` reads ``array``.

    Each entry is moved by ±eps in place and restored bit for bit afterwards.
    """
    grad = np.empty(array.shape, dtype=np.float64)
    flat, gflat = array.reshape(-1), grad.reshape(-1)
    assert np.shares_memory(flat, array)
    for i in range(flat.size):
        saved = flat[i]
        flat[i] = saved + eps
        up = loss()
        flat[i] = saved - eps
        down = loss()
        flat[i] = saved
        gflat[i] = (up - down) / (2 * eps)
    return grad


def assert_matches_fd(analytic, numeric, fd, name):
    assert analytic.dtype == np.float64, name
    np.testing.assert_allclose(analytic, numeric, rtol=fd["rtol"], atol=fd["atol"], err_msg=name)
    # a zero gradient would match a zero loss: make sure there was something to compare
    assert np.abs(numeric).max() > 1e-3, f"{name}: finite differences are all ~0"


def _min_abs_preactivation(p, relu):
    """Smallest |pre-activation| of the layer over the sequence (relu's kink is at 0)."""
    q = p
    s, smallest = q["h0"], np.inf
    for t in range(q["x"].shape[0]):
        pre = q["x"][t] @ q["w_ih"].T + q["b_ih"] + s @ q["w_hh"].T + q["b_hh"]
        smallest = min(smallest, np.abs(pre).min())
        s = np.maximum(pre, 0) if relu else np.tanh(pre)
    return smallest


@pytest.fixture
def kernels(backend):
    return _backend.resolve(backend)[1]


LAYER_SHAPES = [(5, 3, 2, 4), (1, 1, 3, 4), (8, 2, 1, 3), (3, 4, 5, 5)]


@pytest.mark.parametrize("shape", LAYER_SHAPES, ids=["T{}-B{}-I{}-H{}".format(*s) for s in LAYER_SHAPES])
@pytest.mark.parametrize("relu", [False, True], ids=["tanh", "relu"])
@pytest.mark.parametrize("with_dh_n", [False, True], ids=["no_dh_n", "dh_n"])
def test_elman_layer_backward_equals_finite_differences(kernels, layer_arrays, fd, shape, relu, with_dh_n):
    rng = np.random.default_rng([*shape, int(relu), int(with_dh_n)])
    p = layer_arrays(rng, "relu" if relu else "tanh", *shape, np.float64)
    # the relu kink must be far from every pre-activation, or differences straddle it
    assert _min_abs_preactivation(p, relu) > 100 * fd["eps"]
    R, S = p["d_out"], (p["dh_n"] if with_dh_n else np.zeros_like(p["dh_n"]))

    def loss():
        hs = kernels.elman_forward(p["x"], p["h0"], p["w_ih"], p["w_hh"], p["b_ih"], p["b_hh"], relu)
        return float(np.sum(hs[1:] * R) + np.sum(hs[-1] * S))

    hs = kernels.elman_forward(p["x"], p["h0"], p["w_ih"], p["w_hh"], p["b_ih"], p["b_hh"], relu)
    dx, dh0, dw_ih, dw_hh, db = kernels.elman_backward(
        R, p["dh_n"] if with_dh_n else None, p["x"], hs, p["w_ih"], p["w_hh"], relu)
    assert_matches_fd(dx, central_difference(loss, p["x"], fd["eps"]), fd, "dx")
    assert_matches_fd(dh0, central_difference(loss, p["h0"], fd["eps"]), fd, "dh0")
    assert_matches_fd(dw_ih, central_difference(loss, p["w_ih"], fd["eps"]), fd, "dw_ih")
    assert_matches_fd(dw_hh, central_difference(loss, p["w_hh"], fd["eps"]), fd, "dw_hh")
    assert_matches_fd(db, central_difference(loss, p["b_ih"], fd["eps"]), fd, "db (b_ih)")
    assert_matches_fd(db, central_difference(loss, p["b_hh"], fd["eps"]), fd, "db (b_hh)")


@pytest.mark.parametrize("shape", [(1, 1, 1), (6, 4, 3), (5, 2, 7)])
def test_linear_backward_equals_finite_differences(kernels, fd, shape):
    M, K, N = shape
    rng = np.random.default_rng(shape)
    x, w, b = rng.standard_normal((M, K)), rng.standard_normal((N, K)), rng.standard_normal(N)
    R = rng.standard_normal((M, N))

    def loss():
        return float(np.sum(kernels.linear_forward(x, w, b) * R))

    dx, dw, db = kernels.linear_backward(R, x, w)
    assert_matches_fd(dx, central_difference(loss, x, fd["eps"]), fd, "dx")
    assert_matches_fd(dw, central_difference(loss, w, fd["eps"]), fd, "dw")
    assert_matches_fd(db, central_difference(loss, b, fd["eps"]), fd, "db")


# --------------------------------------------------------------------------- the model


def _model_inputs(model, T, B, seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((T, B, model.input_size))
    h0 = rng.uniform(-0.8, 0.8, (model.num_layers, B, model.hidden_size))
    if model.cell == "relu":
        h0 = np.abs(h0)
    return x, h0


def _randomise(model, seed):
    """Move every parameter off its initial value, so biases are not all alike."""
    rng = np.random.default_rng(seed)
    for name, value in model.params.items():
        value += rng.uniform(-0.2, 0.2, value.shape) + (0.15 if model.cell == "relu" and "bias" in name else 0)


@pytest.mark.parametrize("cell", ["tanh", "relu"])
@pytest.mark.parametrize("num_layers", [1, 3])
@pytest.mark.parametrize("output_size", [None, 2], ids=["no_readout", "readout"])
def test_model_backward_equals_own_finite_differences(backend, fd, cell, num_layers, output_size):
    model = fb.RNN(3, 4, cell=cell, num_layers=num_layers, output_size=output_size, dtype="float64",
                   seed=num_layers, backend=backend)
    _randomise(model, 7)
    x, h0 = _model_inputs(model, 5, 2, seed=num_layers + 10)
    out, h_n = model.forward(x, h0)
    rng = np.random.default_rng(1)
    R, S = rng.standard_normal(out.shape), rng.standard_normal(h_n.shape)
    g = model.backward(R, S)

    def loss():
        o, h = model.forward(x, h0)
        return float(np.sum(o * R) + np.sum(h * S))

    for name, value in model.params.items():
        assert_matches_fd(g.params[name], central_difference(loss, value, fd["eps"]), fd, name)
    assert_matches_fd(g.x, central_difference(loss, x, fd["eps"]), fd, "g.x")
    assert_matches_fd(g.h0, central_difference(loss, h0, fd["eps"]), fd, "g.h0")


@pytest.mark.parametrize("cell", ["tanh", "relu"])
@pytest.mark.parametrize("num_layers", [1, 3])
@pytest.mark.parametrize("output_size", [None, 3], ids=["no_readout", "readout"])
def test_gradcheck_passes(backend, cell, num_layers, output_size):
    model = fb.RNN(4, 5, cell=cell, num_layers=num_layers, output_size=output_size, dtype="float64",
                   seed=3, backend=backend)
    _randomise(model, 3)
    x, h0 = _model_inputs(model, 6, 3, seed=4)
    worst = fb.gradcheck(model, x, h0)
    assert 0 < worst <= 1


@pytest.mark.parametrize("output_size", [None, 2], ids=["no_readout", "readout"])
def test_gradcheck_passes_bidirectional(backend, output_size):
    model = fb.RNN(3, 4, num_layers=2, bidirectional=True, output_size=output_size, dtype="float64",
                   seed=6, backend=backend)
    _randomise(model, 6)
    rng = np.random.default_rng(6)
    x, h0 = rng.standard_normal((5, 2, 3)), rng.uniform(-0.8, 0.8, (4, 2, 4))
    assert 0 < fb.gradcheck(model, x, h0) <= 1


def test_gradcheck_of_a_float32_model_leaves_it_untouched(backend):
    model = fb.RNN(3, 4, num_layers=2, output_size=2, dtype="float32", seed=5, backend=backend)
    before = model.state_dict()
    x, h0 = _model_inputs(model, 4, 2, seed=5)
    assert fb.gradcheck(model, x.astype(np.float32), h0.astype(np.float32)) <= 1
    assert model.dtype == np.float32
    for name, value in model.params.items():
        assert value.dtype == np.float32
        np.testing.assert_array_equal(value, before[name])


def _perturbing_backward(original, target):
    def backward(self, *args, **kwargs):
        g = original(self, *args, **kwargs)
        if target == "x":
            g.x *= 1.001
        elif target == "h0":
            g.h0 *= 1.001
        else:
            g.params[target] *= 1.001
        return g
    return backward


@pytest.mark.parametrize("target", ["weight_hh_l0", "bias_ih_l1", "weight_out", "x", "h0"])
def test_gradcheck_fails_on_a_wrong_backward(backend, monkeypatch, target):
    model = fb.RNN(3, 4, num_layers=2, output_size=2, dtype="float64", seed=2, backend=backend)
    _randomise(model, 2)
    x, h0 = _model_inputs(model, 5, 2, seed=2)
    assert fb.gradcheck(model, x, h0) <= 1  # right before the patch ...
    # gradcheck runs a float64 twin of the model's class, so the class is patched
    monkeypatch.setattr(fb.RNN, "backward", _perturbing_backward(fb.RNN.backward, target))
    label = target if target in ("x", "h0") else f"params['{target}']"
    with pytest.raises(fb.GradcheckError, match=rf"(?m)^\s*{re.escape(label)}\["):
        fb.gradcheck(model, x, h0)


def test_gradcheck_checks_the_models_own_backward(backend):
    # A subclass that gets its backward wrong must fail the check: gradcheck is documented
    # to "compare model.backward with central differences".
    class WrongRNN(fb.RNN):
        backward = _perturbing_backward(fb.RNN.backward, "weight_hh_l0")

    model = WrongRNN(3, 4, dtype="float64", seed=2, backend=backend)
    x, h0 = _model_inputs(model, 5, 2, seed=2)
    with pytest.raises(fb.GradcheckError, match="weight_hh_l0"):
        fb.gradcheck(model, x, h0)
