"""Variable-length batches: a batch with lengths equals its sequences run one by one at their
own lengths (PyTorch's PackedSequence semantics), in every cell and both backends."""
import numpy as np
import pytest

import fastbptt as fb

CELLS = ["tanh", "relu", "lstm", "gru"]


def _pick(state, b):
    """Sequence b of a state (an array (L, B, H) or an LSTM's (h, c) pair), kept 3-d."""
    if isinstance(state, tuple):
        return tuple(a[:, b:b + 1] for a in state)
    return state[:, b:b + 1]


@pytest.mark.parametrize("backend", fb.available_backends())
@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("output_size", [None, 3])
def test_batch_with_lengths_equals_its_sequences_one_by_one(backend, cell, output_size, random_state):
    rng = np.random.default_rng(CELLS.index(cell))
    model = fb.RNN(4, 5, cell=cell, num_layers=2, output_size=output_size, dtype="float64",
                   seed=0, backend=backend)
    T, B = 7, 5
    lengths = np.array([3, 7, 1, 5, 3])
    x = rng.standard_normal((T, B, 4))
    h0 = random_state(rng, cell, (2, B, 5))
    out, h_n = model.forward(x, h0, lengths=lengths)
    d_out = rng.standard_normal(out.shape)
    d_h_n = random_state(rng, cell, (2, B, 5))
    g = model.backward(d_out, d_h_n, clip_step=0.8, step_norms=True)

    total = {name: 0 for name in g.params}
    for b, L in enumerate(lengths):
        out_b, h_n_b = model.forward(x[:L, b:b + 1], _pick(h0, b))
        g_b = model.backward(d_out[:L, b:b + 1], _pick(d_h_n, b), clip_step=0.8, step_norms=True)
        np.testing.assert_allclose(out[:L, b], out_b[:, 0], rtol=1e-12, atol=1e-14)
        np.testing.assert_array_equal(out[L:, b], 0)
        np.testing.assert_allclose(np.asarray(h_n)[..., b, :], np.asarray(h_n_b)[..., 0, :], rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(g.x[:L, b], g_b.x[:, 0], rtol=1e-12, atol=1e-14)
        np.testing.assert_array_equal(g.x[L:, b], 0)
        np.testing.assert_allclose(np.asarray(g.h0)[..., b, :], np.asarray(g_b.h0)[..., 0, :], rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(g.step_norms[:, :L, b], g_b.step_norms[:, :, 0], rtol=1e-12, atol=1e-14)
        np.testing.assert_array_equal(g.step_norms[:, L:, b], 0)
        for name in total:
            total[name] = total[name] + g_b.params[name]
    for name in total:
        np.testing.assert_allclose(g.params[name], total[name], rtol=1e-11, atol=1e-13, err_msg=name)


@pytest.mark.parametrize("backend", fb.available_backends())
def test_full_lengths_equal_the_padded_batch(backend):
    rng = np.random.default_rng(3)
    model = fb.RNN(3, 4, output_size=2, dtype="float64", seed=1, backend=backend)
    x = rng.standard_normal((6, 3, 3))
    out, h_n = model.forward(x)
    d_out = rng.standard_normal(out.shape)
    g = model.backward(d_out)
    out_l, h_n_l = model.forward(x, lengths=np.array([6, 6, 6]))
    g_l = model.backward(d_out)
    np.testing.assert_allclose(out_l, out, rtol=1e-13)
    np.testing.assert_allclose(h_n_l, h_n, rtol=1e-13)
    for name in g.params:
        np.testing.assert_allclose(g_l.params[name], g.params[name], rtol=1e-12, atol=1e-14)


def test_lengths_are_checked():
    model = fb.RNN(2, 3, dtype="float64")
    x = np.ones((4, 2, 2))
    with pytest.raises(TypeError, match="lengths must hold integers"):
        model.forward(x, lengths=np.array([1.0, 2.0]))
    with pytest.raises(ValueError, match=r"lengths must have shape \(2,\)"):
        model.forward(x, lengths=np.array([1, 2, 3]))
    with pytest.raises(ValueError, match=r"lengths must lie in \[1, 4\]"):
        model.forward(x, lengths=np.array([0, 2]))
    with pytest.raises(ValueError, match=r"lengths must lie in \[1, 4\]"):
        model.forward(x, lengths=[5, 2])
    with pytest.raises(NotImplementedError, match="bidirectional"):
        fb.RNN(2, 3, bidirectional=True, dtype="float64").forward(x, lengths=[4, 2])
    with pytest.raises(ValueError, match="checkpoint"):
        model.forward(x, lengths=[4, 2], checkpoint=2)


@pytest.mark.parametrize("cell", CELLS)
def test_matches_torch_packed_sequence(cell):
    torch = pytest.importorskip("torch")
    from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

    rng = np.random.default_rng(9)
    if cell in ("tanh", "relu"):
        module = torch.nn.RNN(3, 4, num_layers=2, nonlinearity=cell).double()
    else:
        module = getattr(torch.nn, cell.upper())(3, 4, num_layers=2).double()
    model = fb.RNN(3, 4, cell=cell, num_layers=2, dtype="float64")
    model.load_state_dict(module.state_dict())
    lengths = np.array([2, 6, 4])
    x = rng.standard_normal((6, 3, 3))
    x_t = torch.from_numpy(x).requires_grad_()
    packed = pack_padded_sequence(x_t, torch.from_numpy(lengths), enforce_sorted=False)
    out_p, h_n_t = module(packed)
    out_t, _ = pad_packed_sequence(out_p, total_length=6)
    out, h_n = model.forward(x, lengths=lengths)
    np.testing.assert_allclose(out, out_t.detach().numpy(), rtol=1e-12, atol=1e-14)
    h_t = h_n_t[0] if cell == "lstm" else h_n_t
    np.testing.assert_allclose(h_n[0] if cell == "lstm" else h_n, h_t.detach().numpy(), rtol=1e-12, atol=1e-14)
    d_out = rng.standard_normal(out.shape)
    out_t.backward(torch.from_numpy(d_out))
    g = model.backward(d_out)
    for name, p in module.named_parameters():
        np.testing.assert_allclose(g.params[name], p.grad.numpy(), rtol=1e-10, atol=1e-12, err_msg=name)
    np.testing.assert_allclose(g.x, x_t.grad.numpy(), rtol=1e-10, atol=1e-12)
