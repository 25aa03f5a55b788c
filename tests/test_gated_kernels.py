"""LSTM and GRU layer kernels: the NumPy oracle against central finite differences and
against PyTorch, and every compiled build this CPU runs against the oracle.

The layer functions (``lstm_forward``/``lstm_backward``, ``gru_forward``/``gru_backward``)
exist with the same signatures in ``_reference`` and in each compiled build; see the
docstrings of ``_reference`` for the math, the caches and the clipping.
"""
import numpy as np
import pytest

from fastbptt import _backend, _reference

GATES = {"lstm": 4, "gru": 3}
FORWARD_NAMES = {"lstm": ("hs", "cs", "gates"), "gru": ("hs", "gates")}
BACKWARD_NAMES = {"lstm": ("dx", "dh0", "dc0", "dw_ih", "dw_hh", "db"),
                  "gru": ("dx", "dh0", "dw_ih", "dw_hh", "db_ih", "db_hh")}

BUILDS = _backend.compiled_builds()
NO_BUILD = "the compiled kernels are not in use (FASTBPTT_PUREPYTHON=1, or not built)"
COMPILED = ([pytest.param(level, id=level)
             for level in sorted(BUILDS, key=_backend.CPU_LEVELS.index)]
            or [pytest.param(None, id="compiled", marks=pytest.mark.skip(reason=NO_BUILD))])
CELLS = ["lstm", "gru"]
DTYPES = [pytest.param(np.dtype(np.float32), id="float32"),
          pytest.param(np.dtype(np.float64), id="float64")]


def make_layer(rng, cell, T, B, I, H, dtype=np.float64, *, saturate=1.0):
    """Random inputs, parameters and upstream gradients of one gated layer (PyTorch shapes).

    Nothing is zero or one: states in (-0.9, 0.9), a random cell state, weights scaled so
    that the gates neither all saturate nor vanish, random biases and gradients. ``saturate``
    scales x, to drive the gates into saturation.
    """
    G = GATES[cell]
    arrays = dict(
        x=rng.standard_normal((T, B, I)) * saturate,
        h0=rng.uniform(-0.9, 0.9, (B, H)),
        c0=rng.standard_normal((B, H)),
        w_ih=rng.standard_normal((G * H, I)) / np.sqrt(I),
        w_hh=rng.standard_normal((G * H, H)) * (0.9 / np.sqrt(H)),
        b_ih=rng.standard_normal(G * H) * 0.5,
        b_hh=rng.standard_normal(G * H) * 0.5,
        d_out=rng.standard_normal((T, B, H)),
        dh_n=rng.standard_normal((B, H)),
        dc_n=rng.standard_normal((B, H)),
    )
    return {k: np.ascontiguousarray(v, dtype=dtype) for k, v in arrays.items()}


def forward(kernels, cell, a, **over):
    """The cell's forward through ``kernels`` on layer ``a`` (entries overridable): a tuple."""
    a = {**a, **over}
    if cell == "lstm":
        return kernels.lstm_forward(a["x"], a["h0"], a["c0"], a["w_ih"], a["w_hh"], a["b_ih"], a["b_hh"])
    return kernels.gru_forward(a["x"], a["h0"], a["w_ih"], a["w_hh"], a["b_ih"], a["b_hh"])


def backward(kernels, cell, a, cache, clip_step=None, step_norms=None, finals=True, **over):
    """The cell's backward through ``kernels`` from ``cache``: a dict by output name."""
    a = {**a, **over}
    dh_n = a["dh_n"] if finals else None
    if cell == "lstm":
        dc_n = a["dc_n"] if finals else None
        out = kernels.lstm_backward(a["d_out"], dh_n, dc_n, a["x"], *cache, a["w_ih"], a["w_hh"],
                                    clip_step, step_norms)
    else:
        out = kernels.gru_backward(a["d_out"], dh_n, a["x"], *cache, a["w_ih"], a["w_hh"],
                                   clip_step, step_norms)
    assert isinstance(out, tuple) and len(out) == len(BACKWARD_NAMES[cell])
    return dict(zip(BACKWARD_NAMES[cell], out))


def loss(cell, a, **over):
    """E = Σ d_out ⊙ h_t + Σ dh_n ⊙ h_T (+ Σ dc_n ⊙ c_T): its gradient is what backward returns."""
    a = {**a, **over}
    cache = forward(_reference, cell, a)
    hs = cache[0]
    e = np.sum(a["d_out"] * hs[1:]) + np.sum(a["dh_n"] * hs[-1])
    if cell == "lstm":
        e += np.sum(a["dc_n"] * cache[1][-1])
    return e


def numerical_gradient(cell, a, name, eps):
    """∂E/∂a[name] by central differences of step ``eps``."""
    grad = np.empty_like(a[name])
    for idx in np.ndindex(a[name].shape):
        plus, minus = a[name].copy(), a[name].copy()
        plus[idx] += eps
        minus[idx] -= eps
        grad[idx] = (loss(cell, a, **{name: plus}) - loss(cell, a, **{name: minus})) / (2 * eps)
    return grad


# --------------------------------------------------------------------------- the oracle


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("shape", [(4, 3, 3, 5), (1, 1, 2, 3)], ids=["T4-B3", "T1-B1"])
def test_reference_backward_matches_finite_differences(rng, cell, shape, fd, assert_close):
    a = make_layer(rng, cell, *shape)
    g = backward(_reference, cell, a, forward(_reference, cell, a))
    if cell == "lstm":
        expected = dict(dx="x", dh0="h0", dc0="c0", dw_ih="w_ih", dw_hh="w_hh", db="b_ih")
    else:
        expected = dict(dx="x", dh0="h0", dw_ih="w_ih", dw_hh="w_hh", db_ih="b_ih", db_hh="b_hh")
    for out, wrt in expected.items():
        assert_close(g[out], numerical_gradient(cell, a, wrt, fd["eps"]), np.float64, f"{cell} {out}",
                     kind="gated_fd")
    if cell == "lstm":  # b_ih and b_hh enter the LSTM the same way: one db for both
        assert_close(g["db"], numerical_gradient(cell, a, "b_hh", fd["eps"]), np.float64, "lstm db (b_hh)",
                     kind="gated_fd")
    else:  # b_hn sits inside r ⊙ (...), so the GRU's two bias gradients differ
        assert not np.allclose(g["db_ih"], g["db_hh"])


@pytest.mark.parametrize("cell", CELLS)
def test_reference_step_norms_are_the_gradient_reaching_each_step(rng, cell, math_tol):
    """‖∂E/∂h_t‖ = ‖d_out_t + ∂E_{>t}/∂h_t‖, where the second term is the dh0 of the layer
    run on the rest of the sequence from (h_t, c_t): the oracle's dh0 is itself checked by
    finite differences above."""
    T, B = 5, 3
    a = make_layer(rng, cell, T, B, 4, 6)
    cache = forward(_reference, cell, a)
    norms = np.full((T, B), np.nan)
    backward(_reference, cell, a, cache, step_norms=norms)
    for t in range(1, T + 1):
        rest = dict(x=a["x"][t:], d_out=a["d_out"][t:], h0=cache[0][t])
        if cell == "lstm":
            rest["c0"] = cache[1][t]
        dh_t = a["d_out"][t - 1] + backward(
            _reference, cell, a, forward(_reference, cell, a, **rest), **rest)["dh0"]
        np.testing.assert_allclose(norms[t - 1], np.linalg.norm(dh_t, axis=1),
                                   rtol=math_tol(np.float64)["rtol"], err_msg=f"step {t}")


@pytest.mark.parametrize("cell", CELLS)
def test_reference_clipping_bounds_each_steps_gate_gradient(rng, cell, math_tol):
    """For one step of one sequence, db (LSTM) and db_ih (GRU) are the step's gate gradient
    itself: clipped, its norm is clip_step; the LSTM's dc0 (f ⊙ ∂E/∂c, not clipped) and the
    GRU's relation δh_n = δi_n ⊙ r survive clipping."""
    a = make_layer(rng, cell, 1, 1, 3, 4)
    cache = forward(_reference, cell, a)
    free = backward(_reference, cell, a, cache)
    gate_grad = "db" if cell == "lstm" else "db_ih"
    clip_step = 0.25 * np.linalg.norm(free[gate_grad])
    clipped = backward(_reference, cell, a, cache, clip_step=clip_step)
    rtol = math_tol(np.float64)["rtol"]
    np.testing.assert_allclose(np.linalg.norm(clipped[gate_grad]), clip_step, rtol=rtol)
    np.testing.assert_allclose(clipped[gate_grad], free[gate_grad] * 0.25, rtol=rtol)
    if cell == "lstm":
        np.testing.assert_allclose(clipped["dc0"], free["dc0"], rtol=rtol)
    else:
        H = 4
        r = cache[1][0, 0, :H]
        np.testing.assert_allclose(clipped["db_hh"][:2 * H], clipped["db_ih"][:2 * H], rtol=rtol)
        np.testing.assert_allclose(clipped["db_hh"][2 * H:], clipped["db_ih"][2 * H:] * r, rtol=rtol)
    # a bound above every step's norm changes nothing
    loose = backward(_reference, cell, a, cache, clip_step=10 * np.linalg.norm(free[gate_grad]))
    for name in free:
        np.testing.assert_array_equal(loose[name], free[name], err_msg=name)


@pytest.mark.parametrize("cell", CELLS)
def test_reference_clipping_treats_each_sequence_alone(rng, cell, tol):
    """Clipping is per row, so a batch gives what its sequences give one by one."""
    T, B = 4, 3
    a = make_layer(rng, cell, T, B, 3, 5)
    clip_step = 0.3
    batch = backward(_reference, cell, a, forward(_reference, cell, a), clip_step=clip_step)
    free = backward(_reference, cell, a, forward(_reference, cell, a))
    assert not np.allclose(batch["dw_hh"], free["dw_hh"]), "clip_step did not clip: the test is void"
    rows = []
    for b in range(B):
        row = dict(a, x=a["x"][:, b:b + 1], d_out=a["d_out"][:, b:b + 1], h0=a["h0"][b:b + 1],
                   c0=a["c0"][b:b + 1], dh_n=a["dh_n"][b:b + 1], dc_n=a["dc_n"][b:b + 1])
        cache = forward(_reference, cell, row)
        rows.append(backward(_reference, cell, row, cache, clip_step=clip_step))
    for name, value in batch.items():
        if name == "dx":
            expected = np.concatenate([r[name] for r in rows], axis=1)
        elif name in ("dh0", "dc0"):
            expected = np.concatenate([r[name] for r in rows], axis=0)
        else:
            expected = sum(r[name] for r in rows)
        np.testing.assert_allclose(value, expected, err_msg=name, **tol(np.float64, "split"))


@pytest.mark.parametrize("cell", CELLS)
def test_reference_saturated_gates_stay_finite_and_quiet(rng, cell):
    """Pre-activations of hundreds: σ must not overflow e^{-v} (a RuntimeWarning is an error
    in this suite), and everything stays finite in both dtypes."""
    for dtype in (np.float32, np.float64):
        a = make_layer(rng, cell, 3, 2, 4, 5, dtype, saturate=300.0)
        cache = forward(_reference, cell, a)
        g = backward(_reference, cell, a, cache)
        for name, value in [*zip(FORWARD_NAMES[cell], cache), *g.items()]:
            assert value.dtype == dtype, name
            assert np.isfinite(value).all(), name


# --------------------------------------------------------------------------- against torch


def _torch_layer(torch, cell, a):
    I, H = a["x"].shape[2], a["h0"].shape[1]
    module = (torch.nn.LSTM if cell == "lstm" else torch.nn.GRU)(I, H).double()
    with torch.no_grad():
        for name in ("w_ih", "w_hh", "b_ih", "b_hh"):
            torch_name = {"w_ih": "weight_ih_l0", "w_hh": "weight_hh_l0",
                          "b_ih": "bias_ih_l0", "b_hh": "bias_hh_l0"}[name]
            param = getattr(module, torch_name)
            assert tuple(param.shape) == a[name].shape, torch_name
            param.copy_(torch.from_numpy(a[name]))
    return module


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("shape", [(5, 3, 4, 6), (1, 1, 3, 2)], ids=["T5-B3", "T1-B1"])
def test_reference_matches_torch(rng, cell, shape, assert_close):
    torch = pytest.importorskip("torch")
    a = make_layer(rng, cell, *shape)
    module = _torch_layer(torch, cell, a)
    x = torch.tensor(a["x"], requires_grad=True)
    h0 = torch.tensor(a["h0"][None], requires_grad=True)
    if cell == "lstm":
        c0 = torch.tensor(a["c0"][None], requires_grad=True)
        out, (h_n, c_n) = module(x, (h0, c0))
        e = (out * torch.from_numpy(a["d_out"])).sum() + (h_n[0] * torch.from_numpy(a["dh_n"])).sum() \
            + (c_n[0] * torch.from_numpy(a["dc_n"])).sum()
    else:
        out, h_n = module(x, h0)
        e = (out * torch.from_numpy(a["d_out"])).sum() + (h_n[0] * torch.from_numpy(a["dh_n"])).sum()
    e.backward()

    cache = forward(_reference, cell, a)
    assert_close(cache[0][1:], out.detach().numpy(), np.float64, "out", kind="torch_states")
    assert_close(cache[0][-1], h_n[0].detach().numpy(), np.float64, "h_n", kind="torch_states")
    g = backward(_reference, cell, a, cache)
    assert_close(g["dx"], x.grad.numpy(), np.float64, "dx", kind="torch")
    assert_close(g["dh0"], h0.grad[0].numpy(), np.float64, "dh0", kind="torch")
    assert_close(g["dw_ih"], module.weight_ih_l0.grad.numpy(), np.float64, "dw_ih", kind="torch")
    assert_close(g["dw_hh"], module.weight_hh_l0.grad.numpy(), np.float64, "dw_hh", kind="torch")
    if cell == "lstm":
        assert_close(cache[1][-1], c_n[0].detach().numpy(), np.float64, "c_n", kind="torch_states")
        assert_close(g["dc0"], c0.grad[0].numpy(), np.float64, "dc0", kind="torch")
        assert_close(g["db"], module.bias_ih_l0.grad.numpy(), np.float64, "db (bias_ih)", kind="torch")
        assert_close(g["db"], module.bias_hh_l0.grad.numpy(), np.float64, "db (bias_hh)", kind="torch")
    else:
        assert_close(g["db_ih"], module.bias_ih_l0.grad.numpy(), np.float64, "db_ih", kind="torch")
        assert_close(g["db_hh"], module.bias_hh_l0.grad.numpy(), np.float64, "db_hh", kind="torch")


# --------------------------------------------------------------------------- compiled builds

# (T, B, I, H): one step of one sequence; B = 1 on the small per-step path of the backward;
# B = 1 past the small path (G·H·H above it) with H not a multiple of the fused passes'
# chunk of 128; small B > 1 (per-step BLAS); B > 1 with H over one chunk; a larger batch.
SHAPES = [(1, 1, 3, 5), (6, 1, 65, 100), (3, 1, 7, 300), (5, 3, 4, 9), (3, 2, 7, 130),
          (3, 32, 17, 128)]
# plain: d_h_n (and d_c_n) given; clip: clip_step that clips, and step_norms; bare: no final
# gradients (None), with step_norms.
VARIANTS = ["plain", "clip", "bare"]


@pytest.mark.parametrize("level", COMPILED)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("variant", VARIANTS)
def test_compiled_matches_reference(rng, level, dtype, cell, shape, variant, tol, assert_close):
    kernels = BUILDS[level]
    T, B, I, H = shape
    a = make_layer(rng, cell, T, B, I, H, dtype)

    expected = forward(_reference, cell, a)
    got = forward(kernels, cell, a)
    assert isinstance(got, tuple) and len(got) == len(FORWARD_NAMES[cell])
    for name, g, e in zip(FORWARD_NAMES[cell], got, expected):
        assert_close(g, e, dtype, f"{level} {cell} forward {name}", kind="gated")

    # Both backward passes start from the oracle's cache, so that only backward is compared.
    clip_step = None
    if variant == "clip":
        clip_step = 0.2
        free = backward(_reference, cell, a, expected)
        clipped = backward(_reference, cell, a, expected, clip_step=clip_step)
        assert not np.allclose(free["dw_hh"], clipped["dw_hh"], **tol(dtype, "gated")), \
            "clip_step=0.2 clipped nothing: the clipping comparison would be void"
    want_norms = variant != "plain"
    finals = variant != "bare"
    norms_ref = np.full((T, B), np.nan, dtype) if want_norms else None
    norms_got = np.full((T, B), np.nan, dtype) if want_norms else None
    inputs_before = {k: v.copy() for k, v in a.items()}
    cache_before = [c.copy() for c in expected]

    ref = backward(_reference, cell, a, expected, clip_step, norms_ref, finals)
    res = backward(kernels, cell, a, expected, clip_step, norms_got, finals)
    for name in BACKWARD_NAMES[cell]:
        assert_close(res[name], ref[name], dtype, f"{level} {cell} {variant} {name}", kind="gated")
    if want_norms:
        assert np.isfinite(norms_ref).all()
        assert_close(norms_got, norms_ref, dtype, f"{level} {cell} step_norms", kind="gated")
    # the kernels write only their outputs (and step_norms)
    for k, v in a.items():
        np.testing.assert_array_equal(v, inputs_before[k], err_msg=f"{k} was modified")
    for c, before in zip(expected, cache_before):
        np.testing.assert_array_equal(c, before, err_msg="the cache was modified")


@pytest.mark.parametrize("level", COMPILED)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("cell", CELLS)
def test_compiled_saturated_gates_match_reference(rng, level, dtype, cell, assert_close):
    """Pre-activations of hundreds: the float32 σ and tanh clamp, float64 goes through libm;
    both stay finite and agree with the oracle."""
    kernels = BUILDS[level]
    a = make_layer(rng, cell, 4, 3, 5, 7, dtype, saturate=300.0)
    expected = forward(_reference, cell, a)
    got = forward(kernels, cell, a)
    for name, g, e in zip(FORWARD_NAMES[cell], got, expected):
        assert np.isfinite(g).all(), name
        assert_close(g, e, dtype, f"{level} {cell} saturated forward {name}", kind="gated")
    ref = backward(_reference, cell, a, expected)
    res = backward(kernels, cell, a, expected)
    for name in BACKWARD_NAMES[cell]:
        assert_close(res[name], ref[name], dtype, f"{level} {cell} saturated {name}", kind="gated")
