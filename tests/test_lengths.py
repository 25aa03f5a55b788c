"""Variable-length batches (PyTorch's PackedSequence semantics), in every cell, direction and
both backends: the kernels' ``batch_sizes`` against the oracle, the model's ``lengths`` against
its sequences run one by one at their own lengths, against finite differences and, when torch
is installed, against ``pack_padded_sequence``."""
import numpy as np
import pytest
from _support import ALL_CELLS as CELLS
from _support import as_state, state0, torch_module
from _support import state_parts as _parts

import fastbptt as fb
from fastbptt import _reference

F64 = np.dtype(np.float64)


def _pick(state, b):
    """Sequence b of a state (an array (L, B, H) or an LSTM's (h, c) pair), kept 3-d."""
    if isinstance(state, tuple):
        return tuple(a[:, b:b + 1] for a in state)
    return state[:, b:b + 1]


# --------------------------------------------------------------------------- kernels


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("sizes", [[6, 6, 5, 3, 3, 1, 1, 1], [6, 1, 1, 1, 1, 1, 1, 1],
                                   [6, 6, 6, 6, 6, 6, 6, 6], [6, 4, 2, 0, 0, 0, 0, 0]],
                         ids=["mixed", "one-long", "full", "ending-early"])
def test_compiled_batch_sizes_match_the_oracle(compiled_kernels, cell, sizes, dtype, rng, assert_close,
                                                 layer_arrays, run_layer):
    T, B, I, H = 8, 6, 3, 5
    a = layer_arrays(rng, cell, T, B, I, H, dtype)
    sizes = np.array(sizes, dtype=np.intp)
    expected = run_layer(_reference, cell, a, sizes)
    actual = run_layer(compiled_kernels, cell, a, sizes)
    for kind, exp, act in zip(("cache", "gradients"), expected[:2], actual[:2]):
        for i, (e, g) in enumerate(zip(exp, act)):
            assert_close(g, e, dtype, f"{cell} {kind}[{i}]")
    assert_close(actual[2], expected[2], dtype, f"{cell} step norms")


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("ids", [False, True], ids=["floats", "ids"])
def test_compiled_batch_sizes_without_dx_match_the_oracle(compiled_kernels, cell, ids, dtype, rng,
                                                          assert_close, layer_arrays):
    """The weight gradients of a backward without dx (a training step's) run over the running
    rows only, packed, as the backward with dx does: the same gradients as the oracle's, for
    float inputs and for ids (whose dW_ih is the scatter)."""
    T, B, I, H = 9, 7, 4, 5
    a = layer_arrays(rng, cell, T, B, I, H, dtype)
    x = rng.integers(0, I, (T, B)).astype(np.intp) if ids else a["x"]
    sizes = np.array([7, 7, 6, 4, 4, 2, 1, 1, 1], dtype=np.intp)
    spec = fb._cells.CELLS[cell]
    results = []
    for kernels in (_reference, compiled_kernels):
        cache = spec.forward(kernels, x, state0(cell, a), a["w_ih"], a["w_hh"], a["b_ih"],
                             a["b_hh"], sizes)
        results.append(spec.backward(kernels, a["d_out"], None, x, cache, a["w_ih"], a["w_hh"],
                                     None, None, sizes, False))
    expected, actual = results
    assert actual.dx is None
    kind = "gated" if spec.gates > 1 else "oracle"
    for name in ("dw_ih", "dw_hh", "db_ih", "db_hh"):
        assert_close(getattr(actual, name), getattr(expected, name), dtype, f"{cell} {name}",
                     kind=kind)
    for k, (e, g) in enumerate(zip(expected.d_state0, actual.d_state0)):
        assert_close(g, e, dtype, f"{cell} d_state0[{k}]", kind=kind)


@pytest.mark.parametrize("cell", CELLS)
def test_oracle_batch_sizes_zero_finished_rows_and_ignore_their_d_out(cell, rng, layer_arrays, run_layer):
    """The semantics themselves, on the oracle: a finished row's states are zero past its end,
    its d_out there changes nothing, and its dx and step norms there are zero."""
    T, B, I, H = 5, 3, 2, 4
    a = layer_arrays(rng, cell, T, B, I, H, np.float64)
    sizes = np.array([3, 3, 2, 1, 1], dtype=np.intp)
    cache, grads, norms = run_layer(_reference, cell, a, sizes)
    hs = cache[0]
    for t, n in enumerate(sizes):
        np.testing.assert_array_equal(hs[t + 1, n:], 0)
        np.testing.assert_array_equal(grads[0][t, n:], 0)
        np.testing.assert_array_equal(norms[t, n:], 0)
    changed = dict(a, d_out=a["d_out"].copy())
    for t, n in enumerate(sizes):
        changed["d_out"][t, n:] = 1e3
    _, grads_changed, _ = run_layer(_reference, cell, changed, sizes)
    for g, g_changed in zip(grads, grads_changed):
        np.testing.assert_array_equal(g_changed, g)


# --------------------------------------------------------------------------- the model


@pytest.mark.parametrize("backend", fb.available_backends())
@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bidir"])
@pytest.mark.parametrize("output_size", [None, 3])
def test_batch_with_lengths_equals_its_sequences_one_by_one(backend, cell, bidirectional, output_size,
                                                           random_state, assert_close):
    rng = np.random.default_rng(CELLS.index(cell) + 10 * bidirectional)
    model = fb.RNN(4, 5, cell=cell, num_layers=2, output_size=output_size,
                   bidirectional=bidirectional, dtype="float64", seed=0, backend=backend)
    LD = 2 * model.num_directions
    T, B = 7, 5
    lengths = np.array([3, 7, 1, 5, 3])
    x = rng.standard_normal((T, B, 4))
    h0 = random_state(rng, cell, (LD, B, 5))
    out, h_n = model.forward(x, h0, lengths=lengths)
    d_out = rng.standard_normal(out.shape)
    d_h_n = random_state(rng, cell, (LD, B, 5))
    g = model.backward(d_out, d_h_n, clip_step=0.8, step_norms=True)

    total = {name: 0 for name in g.params}
    for b, L in enumerate(lengths):
        out_b, h_n_b = model.forward(x[:L, b:b + 1], _pick(h0, b))
        g_b = model.backward(d_out[:L, b:b + 1], _pick(d_h_n, b), clip_step=0.8, step_norms=True)
        assert_close(out[:L, b], out_b[:, 0], F64, f"out[:, {b}]")
        np.testing.assert_array_equal(out[L:, b], 0)
        for i, (s, s_b) in enumerate(zip(_parts(h_n), _parts(h_n_b))):
            assert_close(s[:, b], s_b[:, 0], F64, f"h_n[{i}][:, {b}]")
        assert_close(g.x[:L, b], g_b.x[:, 0], F64, f"g.x[:, {b}]")
        np.testing.assert_array_equal(g.x[L:, b], 0)
        for i, (s, s_b) in enumerate(zip(_parts(g.h0), _parts(g_b.h0))):
            assert_close(s[:, b], s_b[:, 0], F64, f"g.h0[{i}][:, {b}]")
        assert_close(g.step_norms[:, :L, b], g_b.step_norms[:, :, 0], F64, f"step_norms[:, :, {b}]")
        np.testing.assert_array_equal(g.step_norms[:, L:, b], 0)
        for name in total:
            total[name] = total[name] + g_b.params[name]
    for name in total:
        assert_close(g.params[name], total[name], F64, name)


@pytest.mark.parametrize("backend", fb.available_backends())
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bidir"])
def test_full_lengths_equal_the_padded_batch(backend, bidirectional, assert_close):
    rng = np.random.default_rng(3)
    model = fb.RNN(3, 4, output_size=2, bidirectional=bidirectional, dtype="float64", seed=1,
                   backend=backend)
    x = rng.standard_normal((6, 3, 3))
    out, h_n = model.forward(x)
    d_out = rng.standard_normal(out.shape)
    g = model.backward(d_out)
    out_l, h_n_l = model.forward(x, lengths=np.array([6, 6, 6]))
    g_l = model.backward(d_out)
    assert_close(out_l, out, F64, "out")
    assert_close(h_n_l, h_n, F64, "h_n")
    assert_close(g_l.x, g.x, F64, "g.x")
    for name in g.params:
        assert_close(g_l.params[name], g.params[name], F64, name)


@pytest.mark.parametrize("backend", fb.available_backends())
@pytest.mark.parametrize("cell", CELLS)
def test_lengths_with_checkpoint_equal_full_bptt(backend, cell, random_state, assert_close):
    rng = np.random.default_rng(20 + CELLS.index(cell))
    model = fb.RNN(3, 4, cell=cell, num_layers=2, output_size=2, dtype="float64", seed=2,
                   backend=backend)
    T, B = 11, 4
    lengths = np.array([4, 11, 7, 1])
    x = rng.standard_normal((T, B, 3))
    h0 = random_state(rng, cell, (2, B, 4))
    out, h_n = model.forward(x, h0, lengths=lengths)
    d_out = rng.standard_normal(out.shape)
    d_h_n = random_state(rng, cell, (2, B, 4))
    g = model.backward(d_out, d_h_n, clip_step=1.5, step_norms=True)
    for k in (1, 3, 5):
        out_k, h_n_k = model.forward(x, h0, lengths=lengths, checkpoint=k)
        g_k = model.backward(d_out, d_h_n, clip_step=1.5, step_norms=True)
        assert_close(out_k, out, F64, f"out, checkpoint={k}")
        for i, (s, s_k) in enumerate(zip(_parts(h_n), _parts(h_n_k))):
            assert_close(s_k, s, F64, f"h_n[{i}], checkpoint={k}")
        assert_close(g_k.x, g.x, F64, f"g.x, checkpoint={k}")
        assert_close(g_k.step_norms, g.step_norms, F64, f"step_norms, checkpoint={k}")
        for name in g.params:
            assert_close(g_k.params[name], g.params[name], F64, f"{name}, checkpoint={k}")


@pytest.mark.parametrize("backend", fb.available_backends())
@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bidir"])
def test_lengths_gradients_match_finite_differences(backend, cell, bidirectional, fd, random_state):
    rng = np.random.default_rng(30 + CELLS.index(cell))
    model = fb.RNN(3, 4, cell=cell, num_layers=2, output_size=2, bidirectional=bidirectional,
                   dtype="float64", seed=4, backend=backend)
    x = rng.standard_normal((6, 3, 3))
    h0 = random_state(rng, cell, (2 * model.num_directions, 3, 4))
    worst = fb.gradcheck(model, x, h0, lengths=np.array([2, 6, 4]), eps=fd["eps"], rtol=fd["rtol"],
                         atol=fd["atol"], max_checks=8)
    assert worst <= 1


def test_lengths_leave_the_callers_arrays_alone():
    rng = np.random.default_rng(5)
    model = fb.RNN(2, 3, output_size=2, bidirectional=True, dtype="float64", seed=0)
    x = rng.standard_normal((4, 3, 2))
    lengths = np.array([2, 4, 1])
    copies = x.copy(), lengths.copy()
    out, _ = model.forward(x, lengths=lengths)
    d_out = rng.standard_normal(out.shape)
    d_out_copy = d_out.copy()
    model.backward(d_out)
    np.testing.assert_array_equal(x, copies[0])
    np.testing.assert_array_equal(lengths, copies[1])
    np.testing.assert_array_equal(d_out, d_out_copy)


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


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bidir"])
def test_matches_torch_packed_sequence(cell, bidirectional, assert_close):
    torch = pytest.importorskip("torch")
    from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

    rng = np.random.default_rng(9)
    module = torch_module(torch, cell, 3, 4, num_layers=2, bidirectional=bidirectional)
    model = fb.RNN(3, 4, cell=cell, num_layers=2, bidirectional=bidirectional, dtype="float64")
    model.load_state_dict(module.state_dict())
    lengths = np.array([2, 6, 4])
    x = rng.standard_normal((6, 3, 3))
    x_t = torch.from_numpy(x).requires_grad_()
    packed = pack_padded_sequence(x_t, torch.from_numpy(lengths), enforce_sorted=False)
    out_p, h_n_t = module(packed)
    out_t, _ = pad_packed_sequence(out_p, total_length=6)
    out, h_n = model.forward(x, lengths=lengths)
    assert_close(out, out_t.detach().numpy(), F64, "out")
    for i, (s, s_t) in enumerate(zip(_parts(h_n), _parts(h_n_t))):
        assert_close(s, s_t.detach().numpy(), F64, f"h_n[{i}]")
    d_out = rng.standard_normal(out.shape)
    d_h_n = [rng.standard_normal(s.shape) for s in _parts(h_n)]
    loss = (out_t * torch.from_numpy(d_out)).sum()
    loss = loss + sum((s_t * torch.from_numpy(d)).sum() for s_t, d in zip(_parts(h_n_t), d_h_n))
    loss.backward()
    g = model.backward(d_out, as_state(cell, d_h_n))
    for name, p in module.named_parameters():
        assert_close(g.params[name], p.grad.numpy(), F64, name)
    assert_close(g.x, x_t.grad.numpy(), F64, "g.x")


# --------------------------------------------------------------------------- losses, training


@pytest.mark.parametrize("last_step", [False, True], ids=["every-step", "last-step"])
def test_mse_with_lengths_scores_each_sequence_on_its_own_steps(last_step, rng, assert_close_to_math):
    T, B, O = 6, 4, 3
    lengths = np.array([2, 6, 1, 4])
    out = rng.standard_normal((T, B, O))
    target = rng.standard_normal((B, O) if last_step else (T, B, O))
    if not last_step:
        for b, L in enumerate(lengths):
            target[L:, b] = np.nan          # padding past the end is never read
    loss, d_out = fb.losses.mse(out, target, last_step=last_step, lengths=lengths)
    total, expected = 0.0, np.zeros_like(out)
    for b, L in enumerate(lengths):
        t_b = target[b:b + 1] if last_step else target[:L, b:b + 1]
        loss_b, d_b = fb.losses.mse(out[:L, b:b + 1], t_b, last_step=last_step)
        total += loss_b / B
        expected[:L, b] = d_b[:, 0] / B
    assert_close_to_math(np.array(loss), np.array(total), np.float64, "loss")
    assert_close_to_math(d_out, expected, np.float64, "d_out")


@pytest.mark.parametrize("last_step", [False, True], ids=["every-step", "last-step"])
def test_cross_entropy_with_lengths_scores_each_sequence_on_its_own_steps(last_step, rng,
                                                                        assert_close_to_math):
    T, B, C = 5, 3, 4
    lengths = np.array([5, 2, 3])
    logits = rng.standard_normal((T, B, C))
    labels = rng.integers(0, C, (B,) if last_step else (T, B))
    if not last_step:
        for b, L in enumerate(lengths):
            labels[L:, b] = -100            # PyTorch's usual padding label: ignored
    loss, d_out = fb.losses.cross_entropy(logits, labels, last_step=last_step, lengths=lengths)
    total, expected = 0.0, np.zeros_like(logits)
    for b, L in enumerate(lengths):
        l_b = labels[b:b + 1] if last_step else labels[:L, b:b + 1]
        loss_b, d_b = fb.losses.cross_entropy(logits[:L, b:b + 1], l_b, last_step=last_step)
        total += loss_b / B
        expected[:L, b] = d_b[:, 0] / B
    assert_close_to_math(np.array(loss), np.array(total), np.float64, "loss")
    assert_close_to_math(d_out, expected, np.float64, "d_out")


def test_losses_check_lengths_and_the_scored_targets():
    out = np.zeros((4, 2, 3))
    with pytest.raises(ValueError, match=r"lengths must lie in \[1, 4\]"):
        fb.losses.mse(out, np.zeros((4, 2, 3)), lengths=[0, 4])
    with pytest.raises(ValueError, match="target contains NaN"):
        fb.losses.mse(out, np.full((4, 2, 3), np.nan), lengths=[1, 4])
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\)"):
        fb.losses.cross_entropy(out, np.full((4, 2), 3), lengths=[2, 2])


@pytest.mark.parametrize("backend", fb.available_backends())
@pytest.mark.parametrize("last_step", [False, True], ids=["every-step", "last-step"])
def test_fit_with_lengths_takes_the_step_of_the_packed_gradients(backend, last_step, assert_close):
    rng = np.random.default_rng(40)
    T, B = 7, 4
    lengths = np.array([3, 7, 5, 1])
    x = rng.standard_normal((T, B, 2))
    target = rng.standard_normal((B, 1) if last_step else (T, B, 1))
    model = fb.RNN(2, 5, cell="gru", output_size=1, dtype="float64", seed=3, backend=backend)
    expected = {name: value.copy() for name, value in model.params.items()}
    out, _ = model.forward(x, lengths=lengths)
    loss, d_out = fb.losses.mse(out, target, last_step=last_step, lengths=lengths)
    g = model.backward(d_out)
    for name in expected:
        expected[name] -= 0.1 * g.params[name]
    history = fb.train.fit(model, [(x, target, lengths)], steps=1, optimizer=fb.optim.SGD(model.params, lr=0.1),
                           last_step=last_step, progress=False, eval_data=(x, target, lengths))
    assert history.loss == [loss]
    for name, value in expected.items():
        assert_close(model.params[name], value, np.float64, name)
    assert history.eval_loss[-1] == fb.train.evaluate(model, x, target, last_step=last_step, lengths=lengths)


def test_fit_rejects_lengths_with_truncated_bptt_and_malformed_batches():
    model = fb.RNN(2, 3, output_size=1, dtype="float64")
    x, target = np.zeros((4, 2, 2)), np.zeros((4, 2, 1))
    optimizer = fb.optim.SGD(model.params, lr=0.1)
    with pytest.raises(ValueError, match="bptt .* lengths cannot be combined"):
        fb.train.fit(model, [(x, target, [4, 2])], steps=1, optimizer=optimizer, bptt=(2, 2), progress=False)
    with pytest.raises(ValueError, match=r"batch 0 must be \(x, target\) or \(x, target, lengths\)"):
        fb.train.fit(model, [(x, target, [4, 2], None)], steps=1, optimizer=optimizer, progress=False)
