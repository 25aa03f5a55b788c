"""LSTM and GRU through the RNN class: stacking, directions, (h, c) states, checkpointing,
and PyTorch's modules as the reference where torch is installed."""
import numpy as np
import pytest
from _support import GATED_CELLS as GATED
from _support import as_state, state_parts, torch_module

import fastbptt as fb


@pytest.mark.parametrize("backend", fb.available_backends())
@pytest.mark.parametrize("cell", GATED)
@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("num_layers, output_size", [(1, None), (2, 3)])
def test_gradients_match_finite_differences(backend, cell, bidirectional, num_layers, output_size,
                                             random_state):
    rng = np.random.default_rng(num_layers + 2 * bidirectional)
    model = fb.RNN(3, 4, cell=cell, num_layers=num_layers, bidirectional=bidirectional,
                   output_size=output_size, dtype="float64", seed=1, backend=backend)
    D = 2 if bidirectional else 1
    x = rng.standard_normal((5, 2, 3))
    assert fb.gradcheck(model, x, random_state(rng, cell, (D * num_layers, 2, 4))) <= 1


@pytest.mark.skipif("cython" not in fb.available_backends(), reason="the compiled kernels are not in use")
@pytest.mark.parametrize("cell", GATED)
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_compiled_model_matches_the_numpy_model(cell, dtype, tol, random_state):
    t = tol(dtype, "gated")
    rng = np.random.default_rng(7)
    models = [fb.RNN(5, 6, cell=cell, num_layers=2, bidirectional=True, output_size=2,
                     dtype=dtype, seed=3, backend=b) for b in ("cython", "numpy")]
    x = rng.standard_normal((7, 3, 5)).astype(dtype)
    h0 = random_state(rng, cell, (4, 3, 6))
    h0 = as_state(cell, [a.astype(dtype) for a in state_parts(h0)])
    results = []
    for model in models:
        out, h_n = model.forward(x, h0)
        g = model.backward(np.ones_like(out), clip_step=0.5, step_norms=True)
        results.append((out, h_n, g))
    (out_c, h_c, g_c), (out_n, h_n_, g_n) = results
    np.testing.assert_allclose(out_c, out_n, **t)
    np.testing.assert_allclose(np.asarray(h_c), np.asarray(h_n_), **t)
    for name in g_n.params:
        np.testing.assert_allclose(g_c.params[name], g_n.params[name], err_msg=name, **t)
    np.testing.assert_allclose(g_c.x, g_n.x, **t)
    np.testing.assert_allclose(np.asarray(g_c.h0), np.asarray(g_n.h0), **t)
    np.testing.assert_allclose(g_c.step_norms, g_n.step_norms, **t)


@pytest.mark.parametrize("backend", fb.available_backends())
@pytest.mark.parametrize("cell", GATED)
def test_checkpointed_gated_gradients_equal_full(backend, cell, tol):
    rng = np.random.default_rng(11)
    model = fb.RNN(3, 5, cell=cell, num_layers=2, output_size=2, dtype="float64", seed=2, backend=backend)
    x = rng.standard_normal((17, 2, 3))
    out, _ = model.forward(x)
    d_out = rng.standard_normal(out.shape)
    full = model.backward(d_out)
    model.forward(x, checkpoint=4)
    part = model.backward(d_out)
    for name in full.params:
        np.testing.assert_allclose(part.params[name], full.params[name], **tol(np.float64, "split"))
    np.testing.assert_allclose(np.asarray(part.h0), np.asarray(full.h0), **tol(np.float64, "split"))


def test_lstm_state_must_be_a_pair():
    model = fb.RNN(2, 3, cell="lstm", dtype="float64")
    x = np.ones((4, 1, 2))
    with pytest.raises(TypeError, match=r"h0 of an LSTM must be a pair \(h, c\)"):
        model.forward(x, np.zeros((1, 1, 3)))
    with pytest.raises(ValueError, match=r"h0\[1\]"):
        model.forward(x, (np.zeros((1, 1, 3)), np.zeros((1, 2, 3))))
    out, (h, c) = model.forward(x)
    assert h.shape == c.shape == (1, 1, 3)


@pytest.mark.parametrize("cell", GATED)
@pytest.mark.parametrize("bidirectional", [False, True])
def test_matches_torch(cell, bidirectional, random_state, tol):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(5)
    module = torch_module(torch, cell, 4, 6, num_layers=2, bidirectional=bidirectional)
    model = fb.RNN(4, 6, cell=cell, num_layers=2, bidirectional=bidirectional, dtype="float64")
    model.load_state_dict(module.state_dict())
    D = 2 if bidirectional else 1
    x = rng.standard_normal((6, 3, 4))
    h0 = random_state(rng, cell, (2 * D, 3, 6))
    x_t = torch.from_numpy(x).requires_grad_()
    h0_t = as_state(cell, [torch.from_numpy(a).requires_grad_() for a in state_parts(h0)])
    out_t, h_n_t = module(x_t, h0_t)
    out, h_n = model.forward(x, h0)
    np.testing.assert_allclose(out, out_t.detach().numpy(), **tol(np.float64, "torch_states"))
    d_out = rng.standard_normal(out.shape)
    parts = state_parts(h_n_t)
    d_h = [rng.standard_normal(tuple(p.shape)) for p in parts]
    for ours, theirs in zip(state_parts(h_n), parts):
        np.testing.assert_allclose(ours, theirs.detach().numpy(), **tol(np.float64, "torch_states"))
    torch.autograd.backward([out_t] + parts, [torch.from_numpy(d_out)] + [torch.from_numpy(d) for d in d_h])
    g = model.backward(d_out, as_state(cell, d_h))
    for name, p in module.named_parameters():
        np.testing.assert_allclose(g.params[name], p.grad.numpy(), err_msg=name, **tol(np.float64, "torch"))
    np.testing.assert_allclose(g.x, x_t.grad.numpy(), **tol(np.float64, "torch"))
    h0_grads = [a.grad.numpy() for a in state_parts(h0_t)]
    for ours, theirs in zip(state_parts(g.h0), h0_grads):
        np.testing.assert_allclose(ours, theirs, **tol(np.float64, "torch"))


def test_gradients_docstring_gives_the_shapes_a_bidirectional_lstm_returns():
    """g.h0 is (D·L, B, H) -- a pair (h, c) of them for an LSTM -- and g.step_norms
    (D·L, T, B), as the docstring of fb.Gradients says."""
    doc = " ".join(fb.Gradients.__doc__.split())
    assert "h0: (D·L, B, H)" in doc and "(h, c)" in doc
    assert "step_norms: (D·L, T, B)" in doc
    T, B, I, H, L = 4, 3, 2, 5, 2
    model = fb.RNN(I, H, cell="lstm", num_layers=L, bidirectional=True, dtype="float64", seed=0)
    out, _ = model.forward(np.random.default_rng(0).standard_normal((T, B, I)))
    g = model.backward(np.ones_like(out), step_norms=True)
    assert isinstance(g.h0, tuple) and [a.shape for a in g.h0] == [(2 * L, B, H)] * 2
    assert g.step_norms.shape == (2 * L, T, B)
