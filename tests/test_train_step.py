"""model.train_step: one call for forward, loss, backward and the optimizer's step.

It skips the parameter snapshot and the second check of d_out, so these tests hold it to the
four calls it stands for, to the bit: every cell, both losses, ids, lengths, the clip, every
optimizer; and to what it leaves behind (no cache) and what it refuses.
"""
import numpy as np
import pytest

import fastbptt as fb

CELLS = ("tanh", "lstm", "gru")


def _case(cell, loss, backend, dtype, *, ids=False, embedding=None):
    model = fb.RNN(5, 7, cell=cell, num_layers=2, output_size=4, dtype=dtype, seed=11,
                   backend=backend, embedding_size=embedding)
    rng = np.random.default_rng(5)
    T, B = 6, 3
    if ids or embedding:
        model = fb.RNN(4 if loss == "cross_entropy" else 5, 7, cell=cell, num_layers=2,
                       output_size=4, dtype=dtype, seed=11, backend=backend,
                       embedding_size=embedding)
        x = rng.integers(0, model.input_size, (T, B))
    else:
        x = rng.standard_normal((T, B, 5)).astype(dtype)
    if loss == "cross_entropy":
        target = rng.integers(0, 4, (T, B))
    else:
        target = rng.standard_normal((T, B, 4)).astype(dtype)
    return model, x, target


def _four_calls(model, optimizer, x, target, loss, clip_norm, last_step=False, lengths=None):
    extra = {} if lengths is None else {"lengths": lengths}
    out, _ = model.forward(x, lengths=lengths)
    value, d_out = getattr(fb.losses, loss)(out, target, last_step=last_step, **extra)
    g = model.backward(d_out, input_grad=False)
    return value, optimizer.step(g.params, clip_norm=clip_norm)


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("loss", ["mse", "cross_entropy"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_train_step_equals_the_four_calls_to_the_bit(backend, cell, loss, dtype):
    pair = [_case(cell, loss, backend, dtype) for _ in range(2)]
    x, target = pair[0][1], pair[0][2]
    optimizers = [fb.optim.Adam(model.params, lr=0.01) for model, _, _ in pair]
    for _ in range(4):
        value, norm = pair[0][0].train_step(x, target, loss=loss, optimizer=optimizers[0],
                                            clip_norm=0.5)
        expected = _four_calls(pair[1][0], optimizers[1], x, target, loss, 0.5)
        assert (value, norm) == expected
        assert isinstance(value, float)
    np.testing.assert_array_equal(pair[0][0].flat_params, pair[1][0].flat_params)


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("make_optimizer", [
    lambda p: fb.optim.SGD(p, lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-3),
    lambda p: fb.optim.Adagrad(p, lr=0.05),
    lambda p: fb.optim.AdamW(p, lr=0.01, weight_decay=0.1),
], ids=["sgd", "adagrad", "adamw"])
def test_train_step_with_lengths_last_step_and_every_optimizer(backend, cell, make_optimizer):
    pair = [_case(cell, "mse", backend, "float64") for _ in range(2)]
    x = pair[0][1]
    target = pair[0][2][-1]                       # one step: many-to-one
    lengths = np.array([6, 2, 4])
    optimizers = [make_optimizer(model.params) for model, _, _ in pair]
    for _ in range(3):
        got = pair[0][0].train_step(x, target, loss="mse", optimizer=optimizers[0],
                                    last_step=True, lengths=lengths)
        expected = _four_calls(pair[1][0], optimizers[1], x, target, "mse", None, True, lengths)
        assert got == expected and got[1] is None
    np.testing.assert_array_equal(pair[0][0].flat_params, pair[1][0].flat_params)


@pytest.mark.parametrize("embedding", [None, 3])
def test_train_step_takes_ids(backend, embedding):
    pair = [_case("lstm", "cross_entropy", backend, "float64", ids=True, embedding=embedding)
            for _ in range(2)]
    x, target = pair[0][1], pair[0][2]
    optimizers = [fb.optim.Adam(model.params, lr=0.01) for model, _, _ in pair]
    for _ in range(3):
        got = pair[0][0].train_step(x, target, loss="cross_entropy", optimizer=optimizers[0],
                                    clip_norm=1.0)
        assert got == _four_calls(pair[1][0], optimizers[1], x, target, "cross_entropy", 1.0)
    np.testing.assert_array_equal(pair[0][0].flat_params, pair[1][0].flat_params)


def test_train_step_takes_a_callable_loss(backend):
    model, x, target = _case("gru", "mse", backend, "float64")
    twin, _, _ = _case("gru", "mse", backend, "float64")
    calls = []

    def half_mse(out, target, last_step=False):
        calls.append(last_step)
        value, d_out = fb.losses.mse(out, target, last_step=last_step)
        return value / 2, d_out / 2

    opt, twin_opt = fb.optim.SGD(model.params, lr=0.1), fb.optim.SGD(twin.params, lr=0.1)
    value, _ = model.train_step(x, target, loss=half_mse, optimizer=opt)
    out, _ = twin.forward(x)
    expected, d_out = half_mse(out, target)
    twin_opt.step(twin.backward(d_out).params)
    assert value == expected and calls == [False, False]
    np.testing.assert_array_equal(model.flat_params, twin.flat_params)


def test_train_step_hands_other_optimizers_the_gradient_dict(backend):
    """An optimizer train_step cannot step over the flat buffers directly (one of separate
    arrays; any object with fb.optim's ``step(grads, clip_norm=)``) gets backward's g.params,
    the same gradients the four calls would pass it, and its step is what happens."""
    class Recording:
        def __init__(self):
            self.received = None

        def step(self, grads, clip_norm=None):
            self.received = ({name: np.array(a) for name, a in grads.items()}, clip_norm)
            return 1.25

    pair = [_case("gru", "mse", backend, "float64") for _ in range(2)]
    x, target = pair[0][1], pair[0][2]
    recording = Recording()
    value, norm = pair[0][0].train_step(x, target, loss="mse", optimizer=recording, clip_norm=0.5)
    assert norm == 1.25
    out, _ = pair[1][0].forward(x)
    expected_value, d_out = fb.losses.mse(out, target)
    g = pair[1][0].backward(d_out, input_grad=False)
    assert value == expected_value
    grads, clip_norm = recording.received
    assert clip_norm == 0.5 and list(grads) == list(g.params)
    for name in grads:
        np.testing.assert_array_equal(grads[name], g.params[name])
    # an fb.optim optimizer over separate arrays (not one buffer) steps them per array
    model, x, target = _case("tanh", "mse", backend, "float64")
    twin = _case("tanh", "mse", backend, "float64")[0]
    separate = {name: a.copy() for name, a in model.params.items()}
    separate_twin = {name: a.copy() for name, a in twin.params.items()}
    opt, opt_twin = fb.optim.Adam(separate, lr=0.01), fb.optim.Adam(separate_twin, lr=0.01)
    model.train_step(x, target, loss="mse", optimizer=opt, clip_norm=0.5)
    _four_calls(twin, opt_twin, x, target, "mse", 0.5)
    for name in separate:
        np.testing.assert_array_equal(separate[name], separate_twin[name])
        assert not np.array_equal(separate[name], model.params[name])   # it stepped its own


def test_train_step_leaves_no_cache(backend):
    model, x, target = _case("lstm", "mse", backend, "float64")
    model.train_step(x, target, loss="mse", optimizer=fb.optim.SGD(model.params, lr=0.1))
    with pytest.raises(RuntimeError, match="before forward"):
        model.backward(np.zeros((6, 3, 4)))


def test_train_step_refuses_bad_arguments_and_changes_nothing(backend):
    model, x, target = _case("tanh", "mse", backend, "float64")
    opt = fb.optim.Adam(model.params, lr=0.1)
    before = model.flat_params.copy()
    with pytest.raises(ValueError, match="loss"):
        model.train_step(x, target, loss="hinge", optimizer=opt)
    bad_x = x.copy()
    bad_x[2, 1, 0] = np.nan
    with pytest.raises(ValueError, match="^x contains"):
        model.train_step(bad_x, target, loss="mse", optimizer=opt)
    with pytest.raises(ValueError, match="target"):
        model.train_step(x, target[:, :2], loss="mse", optimizer=opt)
    with pytest.raises(ValueError, match="clip_norm"):
        model.train_step(x, target, loss="mse", optimizer=opt, clip_norm=-1.0)
    np.testing.assert_array_equal(model.flat_params, before)
    assert opt.step_count == 0
    with pytest.raises(RuntimeError, match="before forward"):   # no half-run cache either
        model.backward(np.zeros((6, 3, 4)))


# --------------------------------------------------------------------------- fit's path


def _stream(x, target, lengths=None, n=4):
    """n batches: x shifted by a little each time, so that every update differs."""
    return [(x + 0.1 * k if x.dtype.kind == "f" else x, target) + (() if lengths is None else (lengths,))
            for k in range(n)]


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("loss", ["mse", "cross_entropy"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_fit_updates_as_train_step_does_to_the_bit(backend, cell, loss, dtype):
    """fit takes train_step's path: the parameters, losses and norms of a run equal, to the
    bit, those of train_step called on the same batches (and so the four calls')."""
    pair = [_case(cell, loss, backend, dtype) for _ in range(2)]
    x, target = pair[0][1], pair[0][2]
    lengths = np.array([6, 2, 4]) if loss == "mse" else None
    batches = _stream(x, target, lengths)
    optimizers = [fb.optim.Adam(model.params, lr=0.01) for model, _, _ in pair]
    history = fb.train.fit(pair[0][0], batches, steps=len(batches), optimizer=optimizers[0],
                           loss=loss, clip_norm=0.5, progress=False)
    expected = [pair[1][0].train_step(b[0], b[1], loss=loss, optimizer=optimizers[1], clip_norm=0.5,
                                      lengths=lengths) for b in batches]
    assert list(zip(history.loss, history.grad_norm)) == expected
    np.testing.assert_array_equal(pair[0][0].flat_params, pair[1][0].flat_params)
    with pytest.raises(RuntimeError, match="before forward"):   # its cache held live parameters
        pair[0][0].backward(np.zeros((6, 3, 4), dtype))


def test_fit_without_clip_logs_the_norm_of_the_whole_gradient(backend):
    model, x, target = _case("gru", "mse", backend, "float64")
    twin = _case("gru", "mse", backend, "float64")[0]
    history = fb.train.fit(model, _stream(x, target, n=1), steps=1, progress=False,
                           optimizer=fb.optim.SGD(model.params, lr=0.1))
    out, _ = twin.forward(x)
    g = twin.backward(fb.losses.mse(out, target)[1])
    expected = np.sqrt(sum(np.sum(a ** 2) for a in g.params.values()))
    assert history.grad_norm[0] == pytest.approx(expected, rel=1e-12)
    fb.optim.SGD(twin.params, lr=0.1).step(g.params)
    np.testing.assert_array_equal(model.flat_params, twin.flat_params)


def test_fit_checks_a_callable_loss_gradient(backend):
    """A built-in loss's d_out is trusted; a callable's is still checked, and named."""
    model, x, target = _case("tanh", "mse", backend, "float64")

    def wrong_shape(out, target, last_step=False):
        return 1.0, np.ones(out.shape[:-1] + (out.shape[-1] + 1,))

    with pytest.raises(ValueError, match="d_out"):
        fb.train.fit(model, _stream(x, target, n=1), steps=1, loss=wrong_shape,
                     optimizer=fb.optim.SGD(model.params, lr=0.1), progress=False)
    with pytest.raises(ValueError, match="d_out"):   # in a truncated-BPTT window too
        fb.train.fit(model, _stream(x, target, n=1), steps=1, loss=wrong_shape, bptt=(2, 4),
                     optimizer=fb.optim.SGD(model.params, lr=0.1), progress=False)
