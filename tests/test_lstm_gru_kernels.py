"""LSTM and GRU layer kernels: the NumPy oracle against central finite differences and
against PyTorch, and every compiled build this CPU runs against the oracle.

The layer functions (``lstm_forward``/``lstm_backward``, ``gru_forward``/``gru_backward``)
exist with the same signatures in ``_reference`` and in each compiled build; see the
docstrings of ``_reference`` for the math, the caches and the clipping. They are called here
through the cell table (``fastbptt._cells``), which gives every cell one return shape.
"""
import _support
import numpy as np
import pytest
from _support import BUILDS, COMPILED_BUILDS, GATED_CELLS, backward_names, cache_names
from _support import layer_arrays as make_gated_layer
from _support import layer_backward, layer_forward

from fastbptt import _reference
from fastbptt._cells import CELLS

DTYPES = [pytest.param(np.dtype(np.float32), id="float32"),
          pytest.param(np.dtype(np.float64), id="float64")]


def _with(a, **over):
    return {**a, **over}


def loss(cell, a):
    """E = Σ d_out ⊙ h_t + Σ dh_n ⊙ h_T (+ Σ dc_n ⊙ c_T): its gradient is what backward returns."""
    cache = layer_forward(_reference, cell, a)
    e = np.sum(a["d_out"] * cache[0][1:])
    for i, s in enumerate(CELLS[cell].states):
        e += np.sum(a[f"d{s}_n"] * cache[i][-1])
    return e


def numerical_gradient(cell, a, name, eps):
    """∂E/∂a[name] by central differences of step ``eps``."""
    grad = np.empty_like(a[name])
    for idx in np.ndindex(a[name].shape):
        plus, minus = a[name].copy(), a[name].copy()
        plus[idx] += eps
        minus[idx] -= eps
        grad[idx] = (loss(cell, _with(a, **{name: plus})) - loss(cell, _with(a, **{name: minus}))) / (2 * eps)
    return grad


def _wrt(cell):
    """Each gradient's input: dx -> x, dh0 -> h0, dw_ih -> w_ih, db_hh -> b_hh, ..."""
    return {name: name[1:] for name in backward_names(cell)}


# --------------------------------------------------------------------------- the oracle


@pytest.mark.parametrize("cell", GATED_CELLS)
@pytest.mark.parametrize("shape", [(4, 3, 3, 5), (1, 1, 2, 3)], ids=["T4-B3", "T1-B1"])
def test_reference_backward_matches_finite_differences(rng, cell, shape, fd, assert_close):
    a = make_gated_layer(rng, cell, *shape)
    g = layer_backward(_reference, cell, a, layer_forward(_reference, cell, a))
    for out, wrt in _wrt(cell).items():
        assert_close(g[out], numerical_gradient(cell, a, wrt, fd["eps"]), np.float64, f"{cell} {out}",
                     kind="gated_fd")


def test_reference_gru_bias_gradients_differ(rng):
    """b_hn sits inside r ⊙ (...), so the GRU's two bias gradients differ (the LSTM's are one:
    b_ih and b_hh enter its gates alike)."""
    a = make_gated_layer(rng, "gru", 4, 3, 3, 5)
    g = layer_backward(_reference, "gru", a, layer_forward(_reference, "gru", a))
    assert not np.allclose(g["db_ih"], g["db_hh"])


@pytest.mark.parametrize("cell", GATED_CELLS)
def test_reference_step_norms_are_the_gradient_reaching_each_step(rng, cell, math_tol):
    """‖∂E/∂h_t‖ = ‖d_out_t + ∂E_{>t}/∂h_t‖, where the second term is the dh0 of the layer
    run on the rest of the sequence from (h_t, c_t): the oracle's dh0 is itself checked by
    finite differences above."""
    T, B = 5, 3
    a = make_gated_layer(rng, cell, T, B, 4, 6)
    cache = layer_forward(_reference, cell, a)
    norms = np.full((T, B), np.nan)
    layer_backward(_reference, cell, a, cache, step_norms=norms)
    for t in range(1, T + 1):
        rest = _with(a, x=a["x"][t:], d_out=a["d_out"][t:],
                     **{f"{s}0": cache[i][t] for i, s in enumerate(CELLS[cell].states)})
        dh_t = a["d_out"][t - 1] + layer_backward(
            _reference, cell, rest, layer_forward(_reference, cell, rest))["dh0"]
        np.testing.assert_allclose(norms[t - 1], np.linalg.norm(dh_t, axis=1),
                                   rtol=math_tol(np.float64)["rtol"], err_msg=f"step {t}")


def _one_step_clipped(rng, cell):
    """(a, cache, free, clipped, clip_step) for one step of one sequence, where db_ih is the
    step's input-side gate gradient itself, clipped to a quarter of its norm."""
    a = make_gated_layer(rng, cell, 1, 1, 3, 4)
    cache = layer_forward(_reference, cell, a)
    free = layer_backward(_reference, cell, a, cache)
    clip_step = 0.25 * np.linalg.norm(free["db_ih"])
    return a, cache, free, layer_backward(_reference, cell, a, cache, clip_step=clip_step), clip_step


@pytest.mark.parametrize("cell", GATED_CELLS)
def test_reference_clipping_bounds_each_steps_gate_gradient(rng, cell, math_tol):
    """For one step of one sequence, db_ih is the step's gate gradient itself: clipped, its
    norm is clip_step, in the unclipped direction; a bound above it changes nothing."""
    a, cache, free, clipped, clip_step = _one_step_clipped(rng, cell)
    rtol = math_tol(np.float64)["rtol"]
    np.testing.assert_allclose(np.linalg.norm(clipped["db_ih"]), clip_step, rtol=rtol)
    np.testing.assert_allclose(clipped["db_ih"], free["db_ih"] * 0.25, rtol=rtol)
    loose = layer_backward(_reference, cell, a, cache, clip_step=10 * np.linalg.norm(free["db_ih"]))
    for name in free:
        np.testing.assert_array_equal(loose[name], free[name], err_msg=name)


def test_reference_lstm_clipping_leaves_the_cell_path(rng, math_tol):
    """The LSTM's dc0 = f ⊙ ∂E/∂c does not pass through the gates: clipping leaves it."""
    _, _, free, clipped, _ = _one_step_clipped(rng, "lstm")
    np.testing.assert_allclose(clipped["dc0"], free["dc0"], rtol=math_tol(np.float64)["rtol"])


def test_reference_gru_clipping_keeps_delta_h_n_equal_to_delta_i_n_times_r(rng, math_tol):
    """δh_t is derived from the clipped δi_t: the r, z blocks equal, δh_n = δi_n ⊙ r."""
    _, cache, _, clipped, _ = _one_step_clipped(rng, "gru")
    H, rtol = 4, math_tol(np.float64)["rtol"]
    r = cache[1][0, 0, :H]
    np.testing.assert_allclose(clipped["db_hh"][:2 * H], clipped["db_ih"][:2 * H], rtol=rtol)
    np.testing.assert_allclose(clipped["db_hh"][2 * H:], clipped["db_ih"][2 * H:] * r, rtol=rtol)


@pytest.mark.parametrize("cell", GATED_CELLS)
def test_reference_clipping_treats_each_sequence_alone(rng, cell, tol):
    """Clipping is per row, so a batch gives what its sequences give one by one."""
    T, B = 4, 3
    a = make_gated_layer(rng, cell, T, B, 3, 5)
    clip_step = 0.3
    cache = layer_forward(_reference, cell, a)
    batch = layer_backward(_reference, cell, a, cache, clip_step=clip_step)
    free = layer_backward(_reference, cell, a, cache)
    assert not np.allclose(batch["dw_hh"], free["dw_hh"]), "clip_step did not clip: the test is void"
    per_row = [k for k in a if k.endswith("0") or k.endswith("_n")]  # h0, dh_n, (c0, dc_n): (B, H)
    rows = []
    for b in range(B):
        row = _with(a, x=a["x"][:, b:b + 1], d_out=a["d_out"][:, b:b + 1],
                    **{k: a[k][b:b + 1] for k in per_row})
        rows.append(layer_backward(_reference, cell, row, layer_forward(_reference, cell, row),
                                   clip_step=clip_step))
    states0 = {f"d{s}0" for s in CELLS[cell].states}
    for name, value in batch.items():
        if name == "dx":
            expected = np.concatenate([r[name] for r in rows], axis=1)
        elif name in states0:
            expected = np.concatenate([r[name] for r in rows], axis=0)
        else:
            expected = sum(r[name] for r in rows)
        np.testing.assert_allclose(value, expected, err_msg=name, **tol(np.float64, "split"))


@pytest.mark.parametrize("cell", GATED_CELLS)
def test_reference_saturated_gates_stay_finite_and_quiet(rng, cell):
    """Pre-activations of hundreds: σ must not overflow e^{-v} (a RuntimeWarning is an error
    in this suite), and everything stays finite in both dtypes."""
    for dtype in (np.float32, np.float64):
        a = make_gated_layer(rng, cell, 3, 2, 4, 5, dtype, saturate=300.0)
        cache = layer_forward(_reference, cell, a)
        g = layer_backward(_reference, cell, a, cache)
        for name, value in [*zip(cache_names(cell, cache), cache), *g.items()]:
            assert value.dtype == dtype, name
            assert np.isfinite(value).all(), name


# --------------------------------------------------------------------------- against torch


def _torch_layer(torch, cell, a):
    I, H = a["x"].shape[2], a["h0"].shape[1]
    module = CELLS[cell].torch_module(torch, I, H).double()
    with torch.no_grad():
        for name, torch_name in (("w_ih", "weight_ih_l0"), ("w_hh", "weight_hh_l0"),
                                 ("b_ih", "bias_ih_l0"), ("b_hh", "bias_hh_l0")):
            param = getattr(module, torch_name)
            assert tuple(param.shape) == a[name].shape, torch_name
            param.copy_(torch.from_numpy(a[name]))
    return module


@pytest.mark.parametrize("cell", GATED_CELLS)
@pytest.mark.parametrize("shape", [(5, 3, 4, 6), (1, 1, 3, 2)], ids=["T5-B3", "T1-B1"])
def test_reference_matches_torch(rng, cell, shape, assert_close):
    torch = pytest.importorskip("torch")
    a = make_gated_layer(rng, cell, *shape)
    states = CELLS[cell].states
    module = _torch_layer(torch, cell, a)
    x = torch.tensor(a["x"], requires_grad=True)
    initial = [torch.tensor(a[f"{s}0"][None], requires_grad=True) for s in states]
    out, finals = module(x, initial[0] if len(states) == 1 else tuple(initial))
    finals = _support.state_parts(finals)
    e = (out * torch.from_numpy(a["d_out"])).sum()
    for s, final in zip(states, finals):
        e = e + (final[0] * torch.from_numpy(a[f"d{s}_n"])).sum()
    e.backward()

    cache = layer_forward(_reference, cell, a)
    assert_close(cache[0][1:], out.detach().numpy(), np.float64, "out", kind="torch_states")
    for i, (s, final) in enumerate(zip(states, finals)):
        assert_close(cache[i][-1], final[0].detach().numpy(), np.float64, f"{s}_n", kind="torch_states")
    g = layer_backward(_reference, cell, a, cache)
    assert_close(g["dx"], x.grad.numpy(), np.float64, "dx", kind="torch")
    for s, t in zip(states, initial):
        assert_close(g[f"d{s}0"], t.grad[0].numpy(), np.float64, f"d{s}0", kind="torch")
    for ours, theirs in (("dw_ih", "weight_ih_l0"), ("dw_hh", "weight_hh_l0"),
                         ("db_ih", "bias_ih_l0"), ("db_hh", "bias_hh_l0")):
        assert_close(g[ours], getattr(module, theirs).grad.numpy(), np.float64, ours, kind="torch")


# --------------------------------------------------------------------------- compiled builds

# (T, B, I, H), chosen to fall on either side of the kernels' size thresholds (these tests
# compare results only; test_paths.py forces each product path and checks it): one step of
# one sequence; B = 1 with small products; B = 1 with G·H·H past the small-product threshold
# and H not a multiple of the fused passes' chunk of 128; small B > 1; B > 1 with H over one
# chunk; a larger batch.
SHAPES = [(1, 1, 3, 5), (6, 1, 65, 100), (3, 1, 7, 300), (5, 3, 4, 9), (3, 2, 7, 130),
          (3, 32, 17, 128)]
# plain: d_h_n (and d_c_n) given; clip: clip_step that clips, and step_norms; bare: no final
# gradients (None), with step_norms.
VARIANTS = ["plain", "clip", "bare"]


@pytest.mark.parametrize("level", COMPILED_BUILDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("cell", GATED_CELLS)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("variant", VARIANTS)
def test_compiled_matches_reference(rng, level, dtype, cell, shape, variant, tol, assert_close):
    kernels = BUILDS[level]
    T, B, I, H = shape
    a = make_gated_layer(rng, cell, T, B, I, H, dtype)

    expected = layer_forward(_reference, cell, a)
    got = layer_forward(kernels, cell, a)
    assert isinstance(got, tuple) and len(got) == len(expected)
    for name, g, e in zip(cache_names(cell, expected), got, expected):
        assert_close(g, e, dtype, f"{level} {cell} forward {name}", kind="gated")

    # Both backward passes start from the oracle's cache, so that only backward is compared.
    clip_step = None
    if variant == "clip":
        clip_step = 0.2
        free = layer_backward(_reference, cell, a, expected)
        clipped = layer_backward(_reference, cell, a, expected, clip_step=clip_step)
        assert not np.allclose(free["dw_hh"], clipped["dw_hh"], **tol(dtype, "gated")), \
            "clip_step=0.2 clipped nothing: the clipping comparison would be void"
    want_norms = variant != "plain"
    finals = variant != "bare"
    norms_ref = np.full((T, B), np.nan, dtype) if want_norms else None
    norms_got = np.full((T, B), np.nan, dtype) if want_norms else None
    inputs_before = {k: v.copy() for k, v in a.items()}
    cache_before = [c.copy() for c in expected]

    ref = layer_backward(_reference, cell, a, expected, clip_step, norms_ref, finals)
    res = layer_backward(kernels, cell, a, expected, clip_step, norms_got, finals)
    for name in backward_names(cell):
        assert_close(res[name], ref[name], dtype, f"{level} {cell} {variant} {name}", kind="gated")
    if want_norms:
        assert np.isfinite(norms_ref).all()
        assert_close(norms_got, norms_ref, dtype, f"{level} {cell} step_norms", kind="gated")
    # the kernels write only their outputs (and step_norms)
    for k, v in a.items():
        np.testing.assert_array_equal(v, inputs_before[k], err_msg=f"{k} was modified")
    for c, before in zip(expected, cache_before):
        np.testing.assert_array_equal(c, before, err_msg="the cache was modified")


@pytest.mark.parametrize("level", COMPILED_BUILDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("cell", GATED_CELLS)
def test_compiled_saturated_gates_match_reference(rng, level, dtype, cell, assert_close):
    """Pre-activations of hundreds: the float32 σ and tanh clamp, float64 goes through libm;
    both stay finite and agree with the oracle."""
    kernels = BUILDS[level]
    a = make_gated_layer(rng, cell, 4, 3, 5, 7, dtype, saturate=300.0)
    expected = layer_forward(_reference, cell, a)
    got = layer_forward(kernels, cell, a)
    for name, g, e in zip(cache_names(cell, expected), got, expected):
        assert np.isfinite(g).all(), name
        assert_close(g, e, dtype, f"{level} {cell} saturated forward {name}", kind="gated")
    ref = layer_backward(_reference, cell, a, expected)
    res = layer_backward(kernels, cell, a, expected)
    for name in backward_names(cell):
        assert_close(res[name], ref[name], dtype, f"{level} {cell} saturated {name}", kind="gated")
