"""The RNN class: parameters, initialisation, stacking, backends, and saving/loading.

The stacked model is compared with the cell and BPTT equations written out by hand here, with
the other backend, and (where PyTorch is installed) with ``torch.nn.RNN``.
"""
import json
import os
import warnings

import numpy as np
import pytest

import fastbptt as fb

PUREPYTHON = os.environ.get("FASTBPTT_PUREPYTHON", "") not in ("", "0")


def pytorch_shapes(I, H, L, O=None):
    """The parameters of torch.nn.RNN(I, H, num_layers=L) (+ a Linear(H, O)), in its order."""
    shapes = {}
    for k in range(L):
        shapes[f"weight_ih_l{k}"] = (H, I if k == 0 else H)
        shapes[f"weight_hh_l{k}"] = (H, H)
        shapes[f"bias_ih_l{k}"] = (H,)
        shapes[f"bias_hh_l{k}"] = (H,)
    if O is not None:
        shapes["weight_out"] = (O, H)
        shapes["bias_out"] = (O,)
    return shapes


# --------------------------------------------------------------------------- the equations by hand


def hand_forward(p, x, h0, relu):
    """The stacked Elman network and its readout, step by step from the equations."""
    f = (lambda v: np.maximum(v, 0)) if relu else np.tanh
    L = h0.shape[0]
    layer_in, states = x, []
    for k in range(L):
        s, hs = h0[k], [h0[k]]
        for t in range(x.shape[0]):
            s = f(layer_in[t] @ p[f"weight_ih_l{k}"].T + p[f"bias_ih_l{k}"]
                  + s @ p[f"weight_hh_l{k}"].T + p[f"bias_hh_l{k}"])
            hs.append(s)
        states.append(np.stack(hs))
        layer_in = states[-1][1:]
    out = layer_in if "weight_out" not in p else layer_in @ p["weight_out"].T + p["bias_out"]
    return out, np.stack([hs[-1] for hs in states]), states


def hand_backward(p, x, states, d_out, d_h_n, relu, clip_step=None):
    """BPTT by hand: δ_t = (∂E/∂s_t + δ_{t+1} W_hh) ⊙ f'(s_t), clipped per row when asked."""
    g = {}
    top = states[-1][1:]
    if "weight_out" in p:
        g["weight_out"] = np.einsum("tbo,tbh->oh", d_out, top)
        g["bias_out"] = d_out.sum(axis=(0, 1))
        d_top = d_out @ p["weight_out"]
    else:
        d_top = d_out
    L, T = len(states), x.shape[0]
    dh0 = [None] * L
    for k in reversed(range(L)):
        layer_in = x if k == 0 else states[k - 1][1:]
        hs, w_ih, w_hh = states[k], p[f"weight_ih_l{k}"], p[f"weight_hh_l{k}"]
        dw_ih, dw_hh = np.zeros_like(w_ih), np.zeros_like(w_hh)
        db = np.zeros(w_hh.shape[0], dtype=x.dtype)
        dx = np.zeros_like(layer_in)
        ds_next = np.zeros_like(hs[0]) if d_h_n is None else d_h_n[k]
        for t in reversed(range(T)):
            ds = d_top[t] + ds_next
            delta = ds * ((hs[t + 1] > 0) if relu else (1 - hs[t + 1] ** 2))
            if clip_step is not None:
                norm = np.linalg.norm(delta, axis=1, keepdims=True)
                delta = np.where(norm > clip_step, delta * (clip_step / np.maximum(norm, 1e-300)), delta)
            dw_ih += delta.T @ layer_in[t]
            dw_hh += delta.T @ hs[t]
            db += delta.sum(axis=0)
            dx[t] = delta @ w_ih
            ds_next = delta @ w_hh
        g[f"weight_ih_l{k}"], g[f"weight_hh_l{k}"] = dw_ih, dw_hh
        g[f"bias_ih_l{k}"], g[f"bias_hh_l{k}"] = db, db
        dh0[k] = ds_next
        d_top = dx
    return g, d_top, np.stack(dh0)


def _inputs(rng, model, T, B, dtype):
    D = 2 if model.bidirectional else 1
    x = rng.standard_normal((T, B, model.input_size)).astype(dtype)
    h0 = rng.uniform(-0.8, 0.8, (D * model.num_layers, B, model.hidden_size)).astype(dtype)
    out_size = model.output_size or D * model.hidden_size
    d_out = rng.standard_normal((T, B, out_size)).astype(dtype)
    d_h_n = rng.standard_normal((D * model.num_layers, B, model.hidden_size)).astype(dtype)
    return x, h0, d_out, d_h_n


# --------------------------------------------------------------------------- parameters


@pytest.mark.parametrize("num_layers,output_size", [(1, None), (1, 4), (3, None), (3, 2)])
def test_parameters_have_pytorch_names_shapes_and_dtype(dtype, num_layers, output_size):
    model = fb.RNN(5, 7, num_layers=num_layers, output_size=output_size, dtype=dtype.name, seed=0)
    expected = pytorch_shapes(5, 7, num_layers, output_size)
    assert list(model.params) == list(expected)  # PyTorch's order, too
    for name, shape in expected.items():
        a = model.params[name]
        assert type(a) is np.ndarray, name
        assert a.shape == shape, name
        assert a.dtype == dtype, name
        assert a.flags.c_contiguous and a.flags.writeable, name
    assert model.dtype == dtype
    # the arrays are the model's own: no two share memory
    arrays = list(model.params.values())
    for i in range(len(arrays)):
        for j in range(i + 1, len(arrays)):
            assert not np.shares_memory(arrays[i], arrays[j])


@pytest.mark.parametrize("num_layers", [1, 2])
def test_default_init_is_uniform_within_one_over_sqrt_h(dtype, math_tol, num_layers):
    H = 64
    model = fb.RNN(32, H, num_layers=num_layers, output_size=5, dtype=dtype.name, seed=1)
    bound = 1 / np.sqrt(H)
    for name, a in model.params.items():
        a64 = a.astype(np.float64)
        assert np.abs(a64).max() <= bound * (1 + math_tol(dtype)["rtol"]), name
        if a.size >= 1000:
            # uniform on ±bound: nearly reaches it, mean 0, standard deviation bound/√3
            assert np.abs(a64).max() > 0.95 * bound, name
            assert abs(a64.mean()) < 0.1 * bound, name
            assert abs(a64.std() - bound / np.sqrt(3)) < 0.05 * bound, name
    assert len({model.params[n].tobytes() for n in model.params}) == len(model.params)


def test_identity_init(dtype, math_tol):
    H = 40
    model = fb.RNN(30, H, num_layers=2, output_size=3, init="identity", dtype=dtype.name, seed=2)
    for k in range(2):
        np.testing.assert_array_equal(model.params[f"weight_hh_l{k}"], np.eye(H, dtype=dtype))
        np.testing.assert_array_equal(model.params[f"bias_ih_l{k}"], np.zeros(H, dtype))
        np.testing.assert_array_equal(model.params[f"bias_hh_l{k}"], np.zeros(H, dtype))
        w = model.params[f"weight_ih_l{k}"].astype(np.float64)
        assert np.abs(w).max() < 0.01          # N(0, 0.001²): small ...
        assert 0.8e-3 < w.std() < 1.2e-3       # ... but not zero
    assert np.abs(model.params["weight_out"]).max() <= 1 / np.sqrt(H) * (1 + math_tol(dtype)["rtol"])
    assert np.abs(model.params["weight_out"]).max() > 0.5 / np.sqrt(H)


def test_orthogonal_init(dtype, math_tol, assert_close_to_math):
    H = 24
    model = fb.RNN(5, H, num_layers=2, init="orthogonal", dtype=dtype.name, seed=3)
    eye = np.eye(H)
    w0 = model.params["weight_hh_l0"].astype(np.float64)
    w1 = model.params["weight_hh_l1"].astype(np.float64)
    for k, w in enumerate((w0, w1)):
        # W Wᵀ and Wᵀ W in the model's dtype, against the identity
        w_dt = model.params[f"weight_hh_l{k}"]
        assert_close_to_math(w_dt @ w_dt.T, eye, dtype, "W Wᵀ")
        assert_close_to_math(w_dt.T @ w_dt, eye, dtype, "Wᵀ W")
        assert np.abs(w - eye).max() > 0.1  # a random rotation, not the identity
    assert not np.allclose(w0, w1)
    bound = 1 / np.sqrt(H)
    for name in ("weight_ih_l0", "weight_ih_l1", "bias_ih_l0", "bias_hh_l1"):
        assert np.abs(model.params[name]).max() <= bound * (1 + math_tol(dtype)["rtol"]), name


@pytest.mark.parametrize("init", ["default", "identity", "orthogonal"])
def test_seed_reproducibility(init, dtype):
    kw = dict(num_layers=2, output_size=3, init=init, dtype=dtype.name)
    a = fb.RNN(4, 6, seed=123, **kw)
    b = fb.RNN(4, 6, seed=np.int64(123), backend="numpy", **kw)
    c = fb.RNN(4, 6, seed=124, **kw)
    for name in a.params:
        np.testing.assert_array_equal(a.params[name], b.params[name], err_msg=name)
        # identity's W_hh and RNN biases do not depend on the seed; everything else does
        fixed = init == "identity" and (name.startswith("weight_hh") or name.startswith("bias_") and name != "bias_out")
        if not fixed:
            assert not np.array_equal(a.params[name], c.params[name]), name
    d, e = fb.RNN(4, 6, **kw), fb.RNN(4, 6, **kw)  # seed=None: fresh randomness each time
    assert not np.array_equal(d.params["weight_ih_l0"], e.params["weight_ih_l0"])


# --------------------------------------------------------------------------- forward and backward


@pytest.mark.parametrize("cell", ["tanh", "relu"])
@pytest.mark.parametrize("clip_step", [None, 0.5], ids=["noclip", "clip"])
def test_three_layers_with_readout_equal_the_equations(backend, dtype, assert_close, tol, rng, cell,
                                                       clip_step):
    model = fb.RNN(3, 5, cell=cell, num_layers=3, output_size=2, dtype=dtype.name, seed=4, backend=backend)
    x, h0, d_out, d_h_n = _inputs(rng, model, 7, 3, dtype)
    if cell == "relu":
        h0 = np.abs(h0)
    out, h_n = model.forward(x, h0)
    relu = cell == "relu"
    want_out, want_h_n, states = hand_forward(model.params, x, h0, relu)
    assert_close(out, want_out, dtype, "out")
    assert_close(h_n, want_h_n, dtype, "h_n")
    g = model.backward(d_out, d_h_n, clip_step=clip_step)
    want, want_x, want_h0 = hand_backward(model.params, x, states, d_out, d_h_n, relu, clip_step)
    for name in model.params:
        assert_close(g.params[name], want[name], dtype, name)
    assert_close(g.x, want_x, dtype, "g.x")
    assert_close(g.h0, want_h0, dtype, "g.h0")
    if clip_step is not None:  # the clip acted
        free, _, _ = hand_backward(model.params, x, states, d_out, d_h_n, relu)
        assert not np.allclose(free["weight_hh_l2"], want["weight_hh_l2"], **tol(dtype, "effect"))


@pytest.mark.parametrize("cell", ["tanh", "relu"])
@pytest.mark.parametrize("num_layers,output_size,bidirectional",
                         [(1, None, False), (2, 3, False), (3, None, False), (2, None, True), (2, 3, True),
                          (1, 1, False)])   # one output: the readout's products in narrow forms
def test_compiled_model_equals_numpy_model(compiled_backend, dtype, assert_close, rng, cell, num_layers,
                                           output_size, bidirectional):
    kw = dict(cell=cell, num_layers=num_layers, output_size=output_size, bidirectional=bidirectional,
              dtype=dtype.name, seed=5)
    fast = fb.RNN(6, 20, backend=compiled_backend, **kw)
    slow = fb.RNN(6, 20, backend="numpy", **kw)
    assert (fast.backend, slow.backend) == ("cython", "numpy")
    x, h0, d_out, d_h_n = _inputs(rng, fast, 25, 4, dtype)
    (out_a, h_n_a), (out_b, h_n_b) = fast.forward(x, h0), slow.forward(x, h0)
    assert_close(out_a, out_b, dtype, "out")
    assert_close(h_n_a, h_n_b, dtype, "h_n")
    ga = fast.backward(d_out, d_h_n, clip_step=1.0, step_norms=True)
    gb = slow.backward(d_out, d_h_n, clip_step=1.0, step_norms=True)
    for name in gb.params:
        assert_close(ga.params[name], gb.params[name], dtype, name)
    assert_close(ga.x, gb.x, dtype, "g.x")
    assert_close(ga.h0, gb.h0, dtype, "g.h0")
    assert_close(ga.step_norms, gb.step_norms, dtype, "g.step_norms")


@pytest.mark.parametrize("num_layers,output_size", [(1, None), (1, 4), (3, None), (3, 2)])
def test_forward_backward_shapes(backend, dtype, rng, num_layers, output_size):
    T, B, I, H = 6, 3, 5, 7
    model = fb.RNN(I, H, num_layers=num_layers, output_size=output_size, dtype=dtype.name, seed=6,
                   backend=backend)
    x = rng.standard_normal((T, B, I)).astype(dtype)
    out, h_n = model.forward(x)
    O = output_size or H
    assert out.shape == (T, B, O) and out.dtype == dtype
    assert h_n.shape == (num_layers, B, H) and h_n.dtype == dtype
    if output_size is None:
        np.testing.assert_array_equal(out[-1], h_n[-1])  # the last layer's final state
    g = model.backward(rng.standard_normal(out.shape).astype(dtype))
    assert isinstance(g, fb.Gradients)
    assert list(g.params) == list(model.params)
    for name, value in model.params.items():
        assert g.params[name].shape == value.shape and g.params[name].dtype == dtype, name
    assert g.x.shape == (T, B, I) and g.x.dtype == dtype
    assert g.h0.shape == (num_layers, B, H) and g.h0.dtype == dtype
    assert g.step_norms is None
    g2 = model.backward(rng.standard_normal(out.shape).astype(dtype), step_norms=True)
    assert g2.step_norms.shape == (num_layers, T, B) and g2.step_norms.dtype == dtype
    # the gradient arrays are distinct: clipping one in place cannot scale another twice
    arrays = list(g.params.values()) + [g.x, g.h0]
    for i in range(len(arrays)):
        for j in range(i + 1, len(arrays)):
            assert not np.shares_memory(arrays[i], arrays[j])
        for p in model.params.values():
            assert not np.shares_memory(arrays[i], p)


def test_zero_h0_is_the_default(backend, dtype, rng):
    model = fb.RNN(3, 4, num_layers=2, dtype=dtype.name, seed=7, backend=backend)
    x = rng.standard_normal((5, 2, 3)).astype(dtype)
    out, h_n = model.forward(x)
    out0, h_n0 = model.forward(x, np.zeros((2, 2, 4), dtype))
    np.testing.assert_array_equal(out, out0)
    np.testing.assert_array_equal(h_n, h_n0)


def test_backward_can_run_twice_from_one_forward(backend, dtype, rng):
    model = fb.RNN(3, 4, num_layers=2, output_size=2, dtype=dtype.name, seed=8, backend=backend)
    x, h0, d_out, d_h_n = _inputs(rng, model, 6, 3, dtype)
    model.forward(x, h0)
    first = model.backward(d_out, d_h_n, clip_step=0.5)
    second = model.backward(d_out, d_h_n, clip_step=0.5)
    for name in first.params:
        np.testing.assert_array_equal(first.params[name], second.params[name], err_msg=name)
    np.testing.assert_array_equal(first.x, second.x)
    np.testing.assert_array_equal(first.h0, second.h0)


def test_gradients_are_taken_at_the_parameters_forward_ran_with(backend, rng):
    # backward's docstring: "Gradients are taken at the parameters forward ran with", and
    # model.params "may be written in place" (an optimizer step does exactly that).
    model = fb.RNN(3, 4, num_layers=2, output_size=2, dtype="float64", seed=9, backend=backend)
    x, h0, d_out, d_h_n = _inputs(rng, model, 5, 2, np.float64)
    model.forward(x, h0)
    expected = model.backward(d_out, d_h_n)
    model.forward(x, h0)
    for value in model.params.values():
        value -= 0.1  # an in-place update between forward and backward
    got = model.backward(d_out, d_h_n)
    for name in expected.params:
        np.testing.assert_array_equal(got.params[name], expected.params[name], err_msg=name)
    np.testing.assert_array_equal(got.x, expected.x)


@pytest.mark.parametrize("output_size", [None, 2], ids=["no_readout", "readout"])
def test_writing_into_the_outputs_does_not_change_backward(backend, rng, output_size):
    # out and h_n belong to the caller: changing them in place (say, out -= target to form
    # the residual) must not silently change the gradients of the next backward. Refusing
    # the write (read-only outputs) would be as good.
    model = fb.RNN(3, 4, num_layers=2, output_size=output_size, dtype="float64", seed=11, backend=backend)
    x, h0, d_out, d_h_n = _inputs(rng, model, 5, 2, np.float64)
    model.forward(x, h0)
    expected = model.backward(d_out, d_h_n)
    out, h_n = model.forward(x, h0)
    for a in (out, h_n):
        try:
            a *= 0.5
        except ValueError:  # read-only
            pass
    got = model.backward(d_out, d_h_n)
    for name in expected.params:
        np.testing.assert_array_equal(got.params[name], expected.params[name], err_msg=name)
    np.testing.assert_array_equal(got.x, expected.x)
    np.testing.assert_array_equal(got.h0, expected.h0)


@pytest.mark.parametrize("cell", ["tanh", "relu"])
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
def test_matches_torch_rnn(backend, assert_close, cell, bidirectional):
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    D = 2 if bidirectional else 1
    net = torch.nn.RNN(3, 5, num_layers=2, nonlinearity=cell, bidirectional=bidirectional).double()
    model = fb.RNN(3, 5, cell=cell, num_layers=2, bidirectional=bidirectional, dtype="float64", seed=0,
                   backend=backend)
    assert list(model.params) == list(net.state_dict())
    for name, value in net.state_dict().items():
        assert model.params[name].shape == tuple(value.shape), name
    model.load_state_dict(net.state_dict())
    rng = np.random.default_rng(10)
    x = rng.standard_normal((6, 4, 3))
    h0 = rng.uniform(0, 0.8, (2 * D, 4, 5))
    R, S = rng.standard_normal((6, 4, 5 * D)), rng.standard_normal((2 * D, 4, 5))
    xt = torch.tensor(x, requires_grad=True)
    h0t = torch.tensor(h0, requires_grad=True)
    out_t, h_n_t = net(xt, h0t)
    (out_t * torch.tensor(R)).sum().add((h_n_t * torch.tensor(S)).sum()).backward()
    out, h_n = model.forward(x, h0)
    g = model.backward(R, S)
    # torch in float64 is one more implementation with its own summation order: TOL's float64
    assert_close(out, out_t.detach().numpy(), np.float64, "out")
    assert_close(h_n, h_n_t.detach().numpy(), np.float64, "h_n")
    for name, p in net.named_parameters():
        assert_close(g.params[name], p.grad.numpy(), np.float64, name)
    assert_close(g.x, xt.grad.numpy(), np.float64, "g.x")
    assert_close(g.h0, h0t.grad.numpy(), np.float64, "g.h0")


# --------------------------------------------------------------------------- backends


def test_backend_selection():
    assert fb.available_backends() == (("numpy",) if PUREPYTHON else ("cython", "numpy"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # 'auto' picks silently in both modes
        auto = fb.RNN(2, 3, backend="auto")
    assert fb.RNN(2, 3).backend == auto.backend == ("numpy" if PUREPYTHON else "cython")
    assert fb.RNN(2, 3, backend="numpy").backend == "numpy"
    if PUREPYTHON:
        with pytest.raises(ImportError, match="compiled kernels are not available"):
            fb.RNN(2, 3, backend="cython")
    else:
        assert fb.RNN(2, 3, backend="cython").backend == "cython"


@pytest.mark.parametrize("name", ["gpu", "Cython", "", "numpy "])
def test_invalid_backend_name_raises(name):
    with pytest.raises(ValueError, match="backend"):
        fb.RNN(2, 3, backend=name)


# --------------------------------------------------------------------------- save / load


CONFIGS = [
    dict(input_size=2, hidden_size=3, dtype="float32", seed=0),
    dict(input_size=np.int32(2), hidden_size=np.int64(3), num_layers=np.int16(2), output_size=np.uint8(1),
         dtype=np.float64, seed=np.int64(5)),
    dict(input_size=4, hidden_size=5, num_layers=3, output_size=2, cell="relu", init="orthogonal",
         dtype="float64", seed=None),
    dict(input_size=1, hidden_size=6, output_size=1, init="identity", dtype="float32", seed=17),
]


@pytest.mark.parametrize("config", CONFIGS, ids=["small", "numpy-ints", "deep-relu-f64", "identity"])
def test_save_load_round_trip_is_bit_exact(backend, tmp_path, rng, config):
    model = fb.RNN(backend=backend, **config)
    for value in model.params.values():  # trained values, not what the seed would give
        value += rng.standard_normal(value.shape).astype(value.dtype)
    path = tmp_path / "model.npz"
    model.save(path)
    loaded = fb.load(path, backend=backend)
    assert loaded.config == model.config
    assert loaded.config["hidden_size"] == int(config["hidden_size"])
    assert loaded.backend == backend
    assert list(loaded.params) == list(model.params)
    for name, value in model.params.items():
        assert loaded.params[name].dtype == value.dtype
        np.testing.assert_array_equal(loaded.params[name], value, err_msg=name)
    x = rng.standard_normal((4, 2, model.input_size)).astype(model.dtype)
    for a, b in zip(model.forward(x), loaded.forward(x)):
        np.testing.assert_array_equal(a, b)
    # the file is a plain .npz that loads without pickle
    with np.load(path, allow_pickle=False) as data:
        assert json.loads(str(data["__config__"]))["hidden_size"] == model.hidden_size
    assert fb.load(str(path), backend="numpy").backend == "numpy"


def test_save_then_load_the_same_path(tmp_path):
    # save(path) then load(path) with a path that does not end in .npz
    model = fb.RNN(2, 3, seed=0)
    path = tmp_path / "weights.bin"
    model.save(path)
    loaded = fb.load(path)
    for name, value in model.params.items():
        np.testing.assert_array_equal(loaded.params[name], value)


def _saved_bytes(tmp_path):
    path = tmp_path / "saved.npz"
    fb.RNN(2, 3, num_layers=2, output_size=1, seed=0).save(path)
    return path.read_bytes()


def _write(tmp_path, data, name="damaged.npz"):
    path = tmp_path / name
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("keep", [0, 1, 10, 100, 0.5, -1, -22, -100])
def test_truncated_file_raises_value_error(tmp_path, keep):
    data = _saved_bytes(tmp_path)
    n = int(len(data) * keep) if isinstance(keep, float) else (keep if keep >= 0 else len(data) + keep)
    with pytest.raises(ValueError):
        fb.load(_write(tmp_path, data[:n]))


def _central_directory(data):
    i = data.find(b"PK\x01\x02")
    assert i > 0
    return i


@pytest.mark.parametrize("field,offset,value", [
    ("version needed to extract", 6, 0xFF),
    ("flags: encrypted", 8, 0x01),
    ("compression method", 10, 0x63),
])
def test_damaged_zip_header_raises_value_error(tmp_path, field, offset, value):
    data = bytearray(_saved_bytes(tmp_path))
    i = _central_directory(data) + offset
    data[i] = value if field != "flags: encrypted" else data[i] | value
    with pytest.raises(ValueError):
        fb.load(_write(tmp_path, bytes(data)))


def test_any_flipped_byte_raises_or_changes_nothing(tmp_path):
    # Every 5th byte flipped: the file is rejected with ValueError, or (a byte zip does not
    # check, such as a timestamp) loads the very same model. Never another exception, and
    # never other parameters.
    data = _saved_bytes(tmp_path)
    original = fb.load(_write(tmp_path, data, "good.npz"))
    others = {}
    for i in range(0, len(data), 5):
        damaged = bytearray(data)
        damaged[i] ^= 0xFF
        try:
            model = fb.load(_write(tmp_path, bytes(damaged)))
        except ValueError:
            continue
        except Exception as exc:  # noqa: BLE001 -- the point is to catch what should not escape
            others[i] = f"{type(exc).__name__}: {exc}"
            continue
        for name, value in original.params.items():
            np.testing.assert_array_equal(model.params[name], value, err_msg=f"byte {i}")
    assert not others, f"non-ValueError for damaged files: {others}"


def test_not_a_model_file_raises_value_error(tmp_path):
    with pytest.raises(ValueError):
        fb.load(_write(tmp_path, b""))
    with pytest.raises(ValueError):
        fb.load(_write(tmp_path, b"hidden_size=3\n" * 20, "text.npz"))
    plain = tmp_path / "plain.npz"
    np.savez(plain, weight=np.ones(3))
    with pytest.raises(ValueError, match="configuration"):
        fb.load(plain)


def test_a_bare_npy_array_is_refused_as_not_a_model_file(tmp_path):
    path = tmp_path / "array.npy"
    np.save(path, np.ones(3))
    with pytest.raises(ValueError, match="not a readable fastbptt model file"):
        fb.load(path)


def _resave(tmp_path, mutate):
    """A saved model's file, rewritten with ``mutate(config, files)`` applied; ``mutate`` may
    return a string to store as the raw configuration instead of the JSON of ``config``."""
    model = fb.RNN(2, 3, output_size=1, seed=0)
    model.save(tmp_path / "good.npz")
    with np.load(tmp_path / "good.npz") as data:
        files = {k: data[k] for k in data.files}
    config = json.loads(str(files["__config__"]))
    raw = mutate(config, files)
    files["__config__"] = np.array(json.dumps(config) if raw is None else raw)
    path = tmp_path / "bad.npz"
    np.savez(path, **files)
    return path


def _drop(d, key):
    del d[key]


INCONSISTENT = {
    "version": (lambda c, f: c.update(format_version=99), "format version"),
    "shape": (lambda c, f: f.update({"param/weight_hh_l0": np.ones((3, 2), np.float32)}), "weight_hh_l0"),
    "dtype": (lambda c, f: f.update({"param/weight_ih_l0": f["param/weight_ih_l0"].astype(np.float64)}),
              "weight_ih_l0"),
    "missing-param": (lambda c, f: _drop(f, "param/bias_out"), "bias_out"),
    "negative-size": (lambda c, f: c.update(hidden_size=-3), "hidden_size"),
    "string-size": (lambda c, f: c.update(hidden_size="3"), "hidden_size"),
    "missing-key": (lambda c, f: _drop(c, "input_size"), "input_size"),
    "unknown-key": (lambda c, f: c.update(colour="blue"), "colour"),
    "no-version": (lambda c, f: _drop(c, "format_version"), "format_version"),
    "bad-json": (lambda c, f: "{not json", "configuration"),
    "json-string": (lambda c, f: '"tanh"', "configuration"),
    "json-number": (lambda c, f: "42", "configuration"),
    "json-null": (lambda c, f: "null", "configuration"),
    "json-list": (lambda c, f: "[1, 2]", "configuration"),
}


@pytest.mark.parametrize("case", list(INCONSISTENT))
def test_inconsistent_file_raises_value_error(tmp_path, case):
    mutate, match = INCONSISTENT[case]
    with pytest.raises(ValueError, match=match):
        fb.load(_resave(tmp_path, mutate))


# --------------------------------------------------------------------------- state_dict


def test_state_dict_round_trip(backend, dtype):
    a = fb.RNN(3, 4, num_layers=2, output_size=2, dtype=dtype.name, seed=1, backend=backend)
    b = fb.RNN(3, 4, num_layers=2, output_size=2, dtype=dtype.name, seed=2, backend=backend)
    own = {name: value for name, value in b.params.items()}
    sd = a.state_dict()
    assert list(sd) == list(a.params)
    b.load_state_dict(sd)
    for name in a.params:
        np.testing.assert_array_equal(b.params[name], a.params[name], err_msg=name)
        assert b.params[name] is own[name]  # copied into the model's own arrays
        assert not np.shares_memory(sd[name], a.params[name])  # state_dict is a copy
    sd["weight_hh_l0"][...] = 0  # ... so neither model sees this
    assert np.abs(a.params["weight_hh_l0"]).max() > 0
    assert np.abs(b.params["weight_hh_l0"]).max() > 0


def test_load_state_dict_converts_the_dtype():
    a = fb.RNN(3, 4, dtype="float64", seed=1)
    b = fb.RNN(3, 4, dtype="float32", seed=2)
    b.load_state_dict(a.state_dict())
    for name, value in a.params.items():
        assert b.params[name].dtype == np.float32
        np.testing.assert_array_equal(b.params[name], value.astype(np.float32))


@pytest.mark.parametrize("case,error,match", [
    ("wrong_shape", ValueError, r"weight_hh_l1.*shape"),
    ("missing", ValueError, r"missing \['bias_hh_l0'\]"),
    ("extra", ValueError, r"unexpected \['weight_ih_l2'\]"),
    ("int", TypeError, "bias_ih_l1"),
    ("nan", ValueError, "weight_ih_l0.*NaN"),
    ("strings", TypeError, "weight_out"),
])
def test_load_state_dict_rejects_bad_dicts_and_changes_nothing(case, error, match):
    model = fb.RNN(3, 4, num_layers=2, output_size=2, seed=1)
    before = model.state_dict()
    sd = fb.RNN(3, 4, num_layers=2, output_size=2, seed=2).state_dict()
    if case == "wrong_shape":
        sd["weight_hh_l1"] = np.zeros((4, 3), np.float32)
    elif case == "missing":
        del sd["bias_hh_l0"]
    elif case == "extra":
        sd["weight_ih_l2"] = np.zeros((4, 4), np.float32)
    elif case == "int":
        sd["bias_ih_l1"] = np.arange(4)
    elif case == "nan":
        sd["weight_ih_l0"][1, 2] = np.nan
    elif case == "strings":
        sd["weight_out"] = np.array([["a"] * 4] * 2)
    with pytest.raises(error, match=match):
        model.load_state_dict(sd)
    for name, value in before.items():  # all or nothing
        np.testing.assert_array_equal(model.params[name], value, err_msg=name)
