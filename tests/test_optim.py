"""fb.optim: each optimizer against its update equations written out here, in float64, step by
step; updates in place with state allocated once; checkpoints; argument checks."""
import io
import tracemalloc

import numpy as np
import pytest

import fastbptt as fb
from fastbptt import optim

SHAPES = {"weight": (6, 4), "bias": (6,), "cube": (2, 3, 5)}
STEPS = 6


def _params(rng, dtype, shapes=SHAPES):
    return {k: np.ascontiguousarray(rng.standard_normal(s), dtype=dtype) for k, s in shapes.items()}


def _grad_stream(rng, params, steps=STEPS):
    """Random gradients; 'bias' gets small ones, so that eps matters where it appears."""
    out = []
    for _ in range(steps):
        g = {}
        for k, p in params.items():
            scale = 1e-2 if k == "bias" else 1.0
            g[k] = (rng.standard_normal(p.shape) * scale).astype(p.dtype)
        out.append(g)
    return out


# ------------------------------------------------------------------ the equations, independently


def ref_sgd(p, grads, lr, momentum=0.0, nesterov=False, weight_decay=0.0):
    """PyTorch's SGD, dampening 0, as in its documentation (b = d at the first step)."""
    p = p.astype(np.float64)
    b = None
    for g in grads:
        d = g.astype(np.float64) + weight_decay * p
        if momentum:
            b = d if b is None else momentum * b + d
            d = d + momentum * b if nesterov else b
        p = p - lr * d
    return p, {"velocity": b} if momentum else {}


def ref_adagrad(p, grads, lr, eps):
    """min-char-rnn: mem += dparam * dparam; param += -lr * dparam / np.sqrt(mem + 1e-8)."""
    p = p.astype(np.float64)
    mem = np.zeros_like(p)
    for g in grads:
        g = g.astype(np.float64)
        mem = mem + g * g
        p = p + -lr * g / np.sqrt(mem + eps)
    return p, {"sum_sq": mem}


def ref_adam(p, grads, lr, betas, eps, weight_decay=0.0):
    """Kingma & Ba's Algorithm 1 with bias-corrected moments, L2 decay in the gradient."""
    b1, b2 = betas
    p = p.astype(np.float64)
    m = np.zeros_like(p)
    v = np.zeros_like(p)
    for t, g in enumerate(grads, start=1):
        g = g.astype(np.float64) + weight_decay * p
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g ** 2
        m_hat = m / (1 - b1 ** t)
        v_hat = v / (1 - b2 ** t)
        p = p - lr * m_hat / (np.sqrt(v_hat) + eps)
    return p, {"m": m, "v": v}


def ref_adamw(p, grads, lr, betas, eps, weight_decay):
    """Loshchilov & Hutter's decoupled decay (torch.optim.AdamW): p shrinks by lr·wd, then Adam."""
    b1, b2 = betas
    p = p.astype(np.float64)
    m = np.zeros_like(p)
    v = np.zeros_like(p)
    for t, g in enumerate(grads, start=1):
        g = g.astype(np.float64)
        p = p * (1 - lr * weight_decay)
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g ** 2
        p = p - lr * (m / (1 - b1 ** t)) / (np.sqrt(v / (1 - b2 ** t)) + eps)
    return p, {"m": m, "v": v}


CASES = [
    pytest.param(optim.SGD, ref_sgd, dict(lr=0.1), id="sgd"),
    pytest.param(optim.SGD, ref_sgd, dict(lr=0.05, momentum=0.9), id="sgd-momentum"),
    pytest.param(optim.SGD, ref_sgd, dict(lr=0.05, momentum=0.9, nesterov=True), id="sgd-nesterov"),
    pytest.param(optim.SGD, ref_sgd, dict(lr=0.05, momentum=0.5, weight_decay=0.1), id="sgd-momentum-decay"),
    pytest.param(optim.SGD, ref_sgd, dict(lr=0.05, momentum=0.7, nesterov=True, weight_decay=0.2),
                 id="sgd-nesterov-decay"),
    pytest.param(optim.SGD, ref_sgd, dict(lr=0.1, weight_decay=0.3), id="sgd-decay"),
    pytest.param(optim.Adagrad, ref_adagrad, dict(lr=0.1, eps=1e-8), id="adagrad"),
    # eps of the order of the small gradients squared: inside vs outside the root differs
    pytest.param(optim.Adagrad, ref_adagrad, dict(lr=0.3, eps=1e-3), id="adagrad-eps"),
    pytest.param(optim.Adam, ref_adam, dict(lr=0.01, betas=(0.9, 0.999), eps=1e-8), id="adam"),
    pytest.param(optim.Adam, ref_adam, dict(lr=0.05, betas=(0.5, 0.8), eps=1e-3), id="adam-betas-eps"),
    pytest.param(optim.Adam, ref_adam, dict(lr=0.02, betas=(0.8, 0.99), eps=1e-8, weight_decay=0.1),
                 id="adam-decay"),
    pytest.param(optim.AdamW, ref_adamw, dict(lr=0.02, betas=(0.8, 0.99), eps=1e-8, weight_decay=0.1),
                 id="adamw"),
    pytest.param(optim.AdamW, ref_adamw, dict(lr=0.05, betas=(0.5, 0.8), eps=1e-3, weight_decay=0.0),
                 id="adamw-no-decay"),
]

@pytest.mark.parametrize("cls, ref, kw", CASES)
def test_steps_match_equations(cls, ref, kw, dtype, rng, assert_close):
    params = _params(rng, dtype)
    start = {k: v.copy() for k, v in params.items()}
    grads = _grad_stream(rng, params)
    grads_copy = [{k: v.copy() for k, v in g.items()} for g in grads]
    opt = cls(params, **kw)
    for g in grads:
        opt.step(g)
    assert opt.step_count == STEPS
    for k in params:
        want_p, want_state = ref(start[k], [g[k] for g in grads], **kw)
        assert_close(params[k], want_p, dtype, f"params[{k!r}]")
        # The displacement too: its error is judged against the update, not the parameter.
        assert_close(params[k] - start[k], want_p - start[k], dtype, f"params[{k!r}] - start")
        assert set(opt.state[k]) == set(want_state)
        for name, want in want_state.items():
            assert_close(opt.state[k][name], want, dtype, f"state[{k!r}][{name!r}]")
    for g, g0 in zip(grads, grads_copy):
        for k in g:
            np.testing.assert_array_equal(g[k], g0[k], err_msg=f"grads[{k!r}] was modified")


@pytest.mark.parametrize("cls, ref, kw", CASES)
def test_mixed_dtypes(cls, ref, kw, rng, assert_close):
    """float32 and float64 parameters in one dict: scratch and state follow each dtype."""
    params = {"a32": rng.standard_normal((7, 3)).astype(np.float32),
              "b64": rng.standard_normal((4, 9)),
              "c32": rng.standard_normal(11).astype(np.float32)}
    start = {k: v.copy() for k, v in params.items()}
    grads = _grad_stream(rng, params, steps=3)
    opt = cls(params, **kw)
    for g in grads:
        opt.step(g)
    for k, p in params.items():
        want_p, want_state = ref(start[k], [g[k] for g in grads], **kw)
        assert_close(p, want_p, p.dtype, k)
        for name, want in want_state.items():
            assert_close(opt.state[k][name], want, p.dtype, f"state[{k!r}][{name!r}]")


def test_defaults():
    """The documented defaults: Adagrad lr 0.1 eps 1e-8 (min-char-rnn); Adam PyTorch's."""
    p = {"w": np.ones(3)}
    ada = optim.Adagrad(p)
    assert (ada.lr, ada.eps) == (0.1, 1e-8)
    adam = optim.Adam(p)
    assert (adam.lr, adam.betas, adam.eps, adam.weight_decay) == (1e-3, (0.9, 0.999), 1e-8, 0.0)
    adamw = optim.AdamW(p)
    assert (adamw.lr, adamw.betas, adamw.eps, adamw.weight_decay) == (1e-3, (0.9, 0.999), 1e-8, 1e-2)
    sgd = optim.SGD(p, lr=0.5)
    assert (sgd.momentum, sgd.nesterov, sgd.weight_decay) == (0.0, False, 0.0)


def test_first_adam_step_is_lr_times_sign(dtype, estimate_tol):
    """With bias correction the first step is lr·g/(|g| + eps) ≈ lr·sign(g), for any scale of g."""
    p = {"w": np.zeros(4, dtype=dtype)}
    g = {"w": np.array([3.0, -1e-3, 250.0, -7.0], dtype=dtype)}
    optim.Adam(p, lr=0.01).step(g)
    np.testing.assert_allclose(p["w"], [-0.01, 0.01, -0.01, 0.01], rtol=estimate_tol["adam_first_step_rtol"])


# ------------------------------------------------------------------ in place, state allocated once


ALL_CONFIGS = [pytest.param(cls, kw, id=f"{cls.__name__}-{i}")
               for i, (cls, kw) in enumerate([
                   (optim.SGD, dict(lr=0.1)),
                   (optim.SGD, dict(lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.01)),
                   (optim.SGD, dict(lr=0.1, momentum=0.9)),
                   (optim.Adagrad, dict(lr=0.1)),
                   (optim.Adam, dict(lr=0.01)),
                   (optim.Adam, dict(lr=0.01, weight_decay=0.01)),
                   (optim.AdamW, dict(lr=0.01, weight_decay=0.01)),
               ])]


@pytest.mark.parametrize("cls, kw", ALL_CONFIGS)
def test_updates_model_params_in_place(cls, kw, dtype):
    model = fb.RNN(3, 5, output_size=2, dtype=dtype, seed=0, backend="numpy")
    arrays = dict(model.params)
    before = {k: v.copy() for k, v in arrays.items()}
    opt = cls(model.params, **kw)
    states = {k: dict(v) for k, v in opt.state.items()}
    rng = np.random.default_rng(1)
    x = rng.standard_normal((4, 2, 3)).astype(dtype)
    y = rng.standard_normal((4, 2, 2)).astype(dtype)
    for _ in range(3):
        out, _ = model.forward(x)
        _, d_out = fb.losses.mse(out, y)
        opt.step(model.backward(d_out).params)
    for k, a in arrays.items():
        assert model.params[k] is a, f"model.params[{k!r}] was replaced, not updated in place"
        assert a.dtype == dtype and a.flags.c_contiguous
        assert not np.array_equal(a, before[k]), f"model.params[{k!r}] did not move"
        assert set(opt.state[k]) == set(states[k])
        for name, buf in states[k].items():
            assert opt.state[k][name] is buf, f"state[{k!r}][{name!r}] was reallocated"
            assert buf.dtype == dtype and buf.shape == a.shape


@pytest.mark.parametrize("cls, kw", ALL_CONFIGS)
def test_step_allocates_no_arrays(cls, kw):
    """A step's peak of new memory stays far below one parameter's size (numpy reports its
    allocations to tracemalloc), so ``p -= lr * g`` and similar temporaries would fail."""
    rng = np.random.default_rng(0)
    params = {"big": rng.standard_normal((400, 300)), "small": rng.standard_normal(300)}
    grads = {k: rng.standard_normal(v.shape) for k, v in params.items()}
    opt = cls(params, **kw)
    opt.step(grads)
    tracemalloc.start()
    try:
        base, _ = tracemalloc.get_traced_memory()
        for _ in range(3):
            opt.step(grads)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak - base < params["big"].nbytes // 20, f"a step allocated {peak - base} bytes"


@pytest.mark.parametrize("cls, kw", ALL_CONFIGS)
def test_bad_grads_change_nothing(cls, kw, rng):
    """Every gradient is checked before any parameter is touched."""
    params = _params(rng, np.float64)
    before = {k: v.copy() for k, v in params.items()}
    opt = cls(params, **kw)
    grads = _grad_stream(rng, params, steps=1)[0]
    grads["cube"] = grads["cube"].astype(np.float32)  # the last key is the bad one
    with pytest.raises(TypeError, match="cube"):
        opt.step(grads)
    assert opt.step_count == 0
    for k in params:
        np.testing.assert_array_equal(params[k], before[k])
        for buf in opt.state[k].values():
            assert not buf.any()


# ------------------------------------------------------------------ checkpoints


@pytest.mark.parametrize("cls, kw", ALL_CONFIGS)
def test_state_dict_round_trip_through_npz(cls, kw, rng):
    """Resuming from a checkpoint gives exactly the run that never stopped."""
    params = _params(rng, np.float32)
    grads = _grad_stream(rng, params, steps=6)
    opt = cls(params, **kw)
    for g in grads[:3]:
        opt.step(g)
    buf = io.BytesIO()
    np.savez(buf, **opt.state_dict())
    saved_params = {k: v.copy() for k, v in params.items()}
    for g in grads[3:]:
        opt.step(g)

    buf.seek(0)
    with np.load(buf, allow_pickle=False) as data:
        checkpoint = dict(data)
    resumed_params = {k: v.copy() for k, v in saved_params.items()}
    resumed = cls(resumed_params, **kw)
    identities = {k: dict(v) for k, v in resumed.state.items()}
    resumed.load_state_dict(checkpoint)
    assert resumed.step_count == 3
    for g in grads[3:]:
        resumed.step(g)
    for k in params:
        np.testing.assert_array_equal(resumed_params[k], params[k], err_msg=k)
        for name, a in identities[k].items():
            assert resumed.state[k][name] is a
            np.testing.assert_array_equal(a, opt.state[k][name])


@pytest.mark.parametrize("cls, kw, slots", [
    pytest.param(optim.SGD, dict(lr=0.1), (), id="sgd"),
    pytest.param(optim.SGD, dict(lr=0.1, momentum=0.9), ("velocity",), id="sgd-momentum"),
    pytest.param(optim.Adagrad, dict(), ("sum_sq",), id="adagrad"),
    pytest.param(optim.Adam, dict(), ("m", "v"), id="adam"),
    pytest.param(optim.AdamW, dict(), ("m", "v"), id="adamw"),
])
def test_state_dict_holds_the_step_and_the_slots_only(cls, kw, slots, rng):
    params = _params(rng, np.float64)
    opt = cls(params, **kw)
    for g in _grad_stream(rng, params, steps=2):
        opt.step(g)
    sd = opt.state_dict()
    assert set(sd) == {"step", *(f"{s}/{k}" for s in slots for k in params)}
    assert sd["step"].shape == () and sd["step"].dtype == np.int64 and sd["step"] == 2
    for s in slots:
        for k, p in params.items():
            a = sd[f"{s}/{k}"]
            assert a.shape == p.shape and a.dtype == p.dtype
            np.testing.assert_array_equal(a, opt.state[k][s])


def test_state_dict_is_a_copy(rng):
    params = _params(rng, np.float64)
    opt = optim.Adam(params)
    opt.step(_grad_stream(rng, params, steps=1)[0])
    sd = opt.state_dict()
    sd["m/weight"][...] = 99
    assert not np.any(opt.state["weight"]["m"] == 99)


def _bad_checkpoints(sd):
    yield "missing", {k: v for k, v in sd.items() if k != "v/bias"}, "v/bias"
    yield "unexpected", dict(sd, **{"m/other": np.zeros(3)}), "m/other"
    yield "shape", dict(sd, **{"m/weight": np.zeros((2, 2))}), "m/weight"
    yield "dtype", dict(sd, **{"v/cube": sd["v/cube"].astype(np.float32)}), "v/cube"
    yield "nan", dict(sd, **{"m/bias": np.full(6, np.nan)}), "m/bias"
    yield "list", dict(sd, **{"m/bias": [0.0] * 6}), "m/bias"
    yield "step-negative", dict(sd, step=np.array(-1)), "step"
    yield "step-float", dict(sd, step=np.array(1.5)), "step"
    yield "step-vector", dict(sd, step=np.array([1, 2])), "step"


def test_load_state_dict_rejects_bad_checkpoints_naming_the_key(rng):
    params = _params(rng, np.float64)
    adam = optim.Adam(params)
    adam.step(_grad_stream(rng, params, steps=1)[0])
    sd = adam.state_dict()
    target = optim.Adam({k: v.copy() for k, v in params.items()})
    for case, bad, key in _bad_checkpoints(sd):
        with pytest.raises(ValueError, match=key):
            target.load_state_dict(bad)
        # nothing of the bad checkpoint was taken
        assert target.step_count == 0, case
        assert not target.state["weight"]["m"].any(), case
    with pytest.raises(ValueError, match="v/weight"):
        optim.Adagrad(params).load_state_dict(sd)
    with pytest.raises(ValueError, match="velocity"):
        optim.SGD(params, lr=0.1).load_state_dict(optim.SGD(params, lr=0.1, momentum=0.9).state_dict())
    with pytest.raises(TypeError, match="mapping"):
        target.load_state_dict([("step", 1)])


def test_zero_state_restarts(rng, assert_close):
    """After zero_state, Adam's bias correction starts over: same as a new optimizer."""
    params = _params(rng, np.float64)
    grads = _grad_stream(rng, params, steps=3)
    opt = optim.Adam(params, lr=0.01)
    for g in grads:
        opt.step(g)
    opt.zero_state()
    assert opt.step_count == 0
    snapshot = {k: v.copy() for k, v in params.items()}
    opt.step(grads[0])
    fresh = optim.Adam({k: v.copy() for k, v in snapshot.items()}, lr=0.01)
    fresh.step(grads[0])
    for k in params:
        assert_close(params[k], fresh.params[k], np.float64, k)


# ------------------------------------------------------------------ training makes progress


@pytest.mark.parametrize("cls, kw", [
    pytest.param(optim.SGD, dict(lr=0.02, momentum=0.9), id="sgd"),
    pytest.param(optim.Adagrad, dict(lr=0.05), id="adagrad"),
    pytest.param(optim.Adam, dict(lr=0.01), id="adam"),
])
def test_fits_a_fixed_batch(cls, kw):
    rng = np.random.default_rng(5)
    model = fb.RNN(2, 8, output_size=1, dtype="float64", seed=2, backend="numpy")
    x = rng.standard_normal((6, 8, 2))
    y = rng.standard_normal((8, 1))
    opt = cls(model.params, **kw)
    losses = []
    for _ in range(60):
        out, _ = model.forward(x)
        loss, d_out = fb.losses.mse(out, y, last_step=True)
        losses.append(loss)
        opt.step(model.backward(d_out).params)
    assert losses[-1] < 0.5 * losses[0], losses[::10]


# ------------------------------------------------------------------ argument checks


@pytest.mark.parametrize("cls", [optim.SGD, optim.Adagrad, optim.Adam, optim.AdamW])
@pytest.mark.parametrize("lr, error", [
    (0.0, ValueError), (-0.1, ValueError), (float("nan"), ValueError), (float("inf"), ValueError),
    ("0.1", TypeError), (None, TypeError), (True, TypeError),
])
def test_bad_lr(cls, lr, error):
    with pytest.raises(error, match="lr"):
        cls({"w": np.ones(3)}, lr=lr)


def test_lr_can_be_scheduled_but_stays_valid():
    opt = optim.SGD({"w": np.ones(3)}, lr=0.1)
    opt.lr = 0.01
    assert opt.lr == 0.01
    with pytest.raises(ValueError, match="lr"):
        opt.lr = -1.0
    assert opt.lr == 0.01


@pytest.mark.parametrize("kw, error, match", [
    (dict(betas=(1.0, 0.999)), ValueError, r"betas\[0\]"),
    (dict(betas=(0.9, 1.0)), ValueError, r"betas\[1\]"),
    (dict(betas=(-0.1, 0.999)), ValueError, r"betas\[0\]"),
    (dict(betas=(0.9, float("nan"))), ValueError, r"betas\[1\]"),
    (dict(betas=(0.9,)), TypeError, "betas"),
    (dict(betas=0.9), TypeError, "betas"),
    (dict(betas=(0.9, "x")), TypeError, r"betas\[1\]"),
    (dict(eps=0.0), ValueError, "eps"),
    (dict(eps=-1e-8), ValueError, "eps"),
    (dict(weight_decay=-0.1), ValueError, "weight_decay"),
])
@pytest.mark.parametrize("cls", [optim.Adam, optim.AdamW])
def test_bad_adam_arguments(cls, kw, error, match):
    with pytest.raises(error, match=match):
        cls({"w": np.ones(3)}, **kw)


@pytest.mark.parametrize("kw, error, match", [
    (dict(momentum=-0.1), ValueError, "momentum"),
    (dict(momentum=1.0), ValueError, "momentum"),
    (dict(nesterov=True), ValueError, "nesterov"),
    (dict(momentum=0.9, nesterov="yes"), TypeError, "nesterov"),
    (dict(weight_decay=float("inf")), ValueError, "weight_decay"),
])
def test_bad_sgd_arguments(kw, error, match):
    with pytest.raises(error, match=match):
        optim.SGD({"w": np.ones(3)}, lr=0.1, **kw)


def test_bad_adagrad_eps():
    with pytest.raises(ValueError, match="eps"):
        optim.Adagrad({"w": np.ones(3)}, eps=0.0)


def _read_only():
    a = np.ones(3)
    a.flags.writeable = False
    return a


SHARED = np.ones(3)


@pytest.mark.parametrize("cls", [optim.SGD, optim.Adagrad, optim.Adam, optim.AdamW])
@pytest.mark.parametrize("params, error, match", [
    ([np.ones(3)], TypeError, "dict"),
    ({}, ValueError, "empty"),
    ({"w": [1.0, 2.0]}, TypeError, "'w'"),
    ({"w": np.ones(3, dtype=np.int64)}, TypeError, "'w'.*int64"),
    ({"w": np.ones(3, dtype=np.float16)}, TypeError, "'w'.*float16"),
    ({"ok": np.ones(2), "w": np.ones((3, 4))[:, ::2]}, ValueError, "'w'.*C-contiguous"),
    ({"w": _read_only()}, ValueError, "'w'.*read-only"),
    ({"w": np.ones((0, 3))}, ValueError, "'w'.*empty"),
    ({"a": SHARED, "b": SHARED}, ValueError, "'b'.*same array"),
], ids=["list", "empty-dict", "not-array", "int", "float16", "strided", "read-only", "size-0", "aliased"])
def test_bad_params(cls, params, error, match):
    with pytest.raises(error, match=match):
        cls(params, lr=0.1)


@pytest.mark.parametrize("cls", [optim.SGD, optim.Adagrad, optim.Adam, optim.AdamW])
def test_bad_grads(cls):
    params = {"weight_hh_l0": np.ones((3, 3), dtype=np.float32), "bias_hh_l0": np.ones(3, dtype=np.float32)}
    opt = cls(params, lr=0.1)
    good = {k: np.ones_like(v) for k, v in params.items()}
    with pytest.raises(TypeError, match="dict"):
        opt.step(list(good.values()))
    with pytest.raises(ValueError, match="missing.*bias_hh_l0"):
        opt.step({"weight_hh_l0": good["weight_hh_l0"]})
    with pytest.raises(ValueError, match="unexpected.*weight_out"):
        opt.step(dict(good, weight_out=np.ones(2, dtype=np.float32)))
    with pytest.raises(ValueError, match=r"bias_hh_l0.*\(3,?\).*\(4,?\)"):
        opt.step(dict(good, bias_hh_l0=np.ones(4, dtype=np.float32)))
    with pytest.raises(TypeError, match="weight_hh_l0.*float32.*float64"):
        opt.step(dict(good, weight_hh_l0=np.ones((3, 3))))
    with pytest.raises(TypeError, match="bias_hh_l0.*ndarray"):
        opt.step(dict(good, bias_hh_l0=[1.0, 1.0, 1.0]))
    np.testing.assert_array_equal(params["weight_hh_l0"], 1.0)
    opt.step(good)  # and the good one goes through
    assert opt.step_count == 1


def test_replaced_param_is_caught():
    """A parameter array swapped in the dict for one of another shape cannot be stepped."""
    params = {"w": np.ones(3)}
    opt = optim.Adam(params)
    params["w"] = np.ones(4)
    with pytest.raises(ValueError, match="'w'"):
        opt.step({"w": np.ones(4)})
