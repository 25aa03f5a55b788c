"""fit(): truncated BPTT(k1, k2) against full BPTT, the carried state, non-finite detection."""
import numpy as np
import pytest

import fastbptt as fb
from fastbptt.train import fit


class Recorder:
    """An optimizer that updates nothing and keeps a copy of every gradient it is given."""

    def __init__(self):
        self.grads = []

    def step(self, grads):
        self.grads.append({k: v.copy() for k, v in grads.items()})


def _model(backend, **kw):
    return fb.RNN(3, 6, num_layers=2, output_size=2, dtype="float64", seed=3, backend=backend, **kw)


def _data(T, B, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((T, B, 3)), rng.standard_normal((T, B, 2))


def _full_gradient(model, x, y, h0=None):
    out, _ = model.forward(x, h0)
    _, d_out = fb.losses.mse(out, y)
    return model.backward(d_out).params


@pytest.fixture(params=fb.available_backends())
def backend(request):
    return request.param


def test_full_bptt_is_one_update_per_batch(backend, tol):
    model = _model(backend)
    x, y = _data(12, 4)
    rec = Recorder()
    fit(model, [(x, y)], steps=1, optimizer=rec, progress=False)
    assert len(rec.grads) == 1
    expected = _full_gradient(model, x, y)
    for name in expected:
        np.testing.assert_allclose(rec.grads[0][name], expected[name], **tol(np.float64, "split"))


@pytest.mark.parametrize("k1", [1, 3, 5, 12])
def test_bptt_reaching_the_start_sums_to_full_bptt(backend, k1, tol):
    # With k2 >= T every window reaches back to step 0 and scores only its new steps, so
    # the updates' gradients (taken at unchanged parameters) add up to full BPTT's.
    model = _model(backend)
    x, y = _data(12, 4)
    rec = Recorder()
    fit(model, [(x, y)], steps=1, optimizer=rec, bptt=(k1, 12), progress=False)
    assert len(rec.grads) == -(-12 // k1)
    expected = _full_gradient(model, x, y)
    for name in expected:
        total = sum(g[name] for g in rec.grads)
        np.testing.assert_allclose(total, expected[name], **tol(np.float64, "split"))


def test_truncated_windows_are_what_they_say(backend, tol):
    # BPTT(2, 4) on T=6: updates at steps 2, 4, 6, through windows [0,2), [0,4), [2,6),
    # each scoring its last two steps; the window starting at 2 starts from the state the
    # forward reached there.
    model = _model(backend)
    x, y = _data(6, 3, seed=1)
    rec = Recorder()
    fit(model, [(x, y)], steps=1, optimizer=rec, bptt=(2, 4), progress=False)
    assert len(rec.grads) == 3
    _, h2 = model.forward(x[:2])
    for g, (start, stop, h0) in zip(rec.grads, [(0, 2, None), (0, 4, None), (2, 6, h2)]):
        out, _ = model.forward(x[start:stop], h0)
        d_out = np.zeros_like(out)
        _, d_out[-2:] = fb.losses.mse(out[-2:], y[stop - 2:stop])
        expected = model.backward(d_out).params
        for name in expected:
            np.testing.assert_allclose(g[name], expected[name], **tol(np.float64, "split"))


def test_carry_state_continues_the_stream(backend, tol):
    # Two consecutive chunks with carry_state equal one long sequence's k1 = k2 = 5 training.
    model = _model(backend)
    x, y = _data(10, 2, seed=2)
    rec_chunks, rec_long = Recorder(), Recorder()
    fit(model, [(x[:5], y[:5]), (x[5:], y[5:])], steps=2, optimizer=rec_chunks,
        carry_state=True, progress=False)
    fit(model, [(x, y)], steps=1, optimizer=rec_long, bptt=(5, 5), progress=False)
    for a, b in zip(rec_chunks.grads, rec_long.grads):
        for name in a:
            np.testing.assert_allclose(a[name], b[name], **tol(np.float64, "split"))
    # and without carrying, the second chunk starts from zeros: a different gradient
    rec_reset = Recorder()
    fit(model, [(x[:5], y[:5]), (x[5:], y[5:])], steps=2, optimizer=rec_reset, progress=False)
    assert not np.allclose(rec_reset.grads[1]["weight_hh_l0"], rec_chunks.grads[1]["weight_hh_l0"])


def test_non_finite_loss_names_the_batch(backend):
    model = _model(backend)
    x, y = _data(5, 2)
    bad = y.copy()
    bad[4, 1, 0] = 1e200  # the squared error overflows to inf
    with pytest.raises(FloatingPointError, match="batch 1"):
        fit(model, [(x, y), (x, bad)], steps=2, optimizer=Recorder(), progress=False)


def test_bptt_arguments_are_checked(backend):
    model = _model(backend)
    x, y = _data(5, 2)
    with pytest.raises(ValueError, match="k1 <= k2"):
        fit(model, [(x, y)], steps=1, optimizer=Recorder(), bptt=(4, 2), progress=False)
    with pytest.raises(ValueError, match="steps"):
        fit(model, [(x, y)], steps=0, optimizer=Recorder(), progress=False)


def test_history_records_losses_and_eval(backend, tol):
    model = _model(backend)
    batches = [_data(5, 2, seed=s) for s in range(6)]
    history = fit(model, batches, steps=6, optimizer=Recorder(), eval_data=batches[0],
                  eval_every=3, progress=False)
    assert history.step == list(range(6))
    expected = [fb.losses.mse(model.forward(x)[0], y)[0] for x, y in batches]
    np.testing.assert_allclose(history.loss, expected, rtol=tol(np.float64, "split")["rtol"])
    assert history.eval_step == [2, 5]
    assert history.updates == 6
    assert len(history.grad_norm) == 6


def test_history_counts_every_batch_when_logging_few(backend, tol):
    model = _model(backend)
    batches = [_data(5, 2, seed=s) for s in range(7)]
    history = fit(model, batches, steps=7, optimizer=Recorder(), log_every=3, progress=False)
    assert history.step == [0, 3, 6]
    assert len(history.loss) == len(history.grad_norm) == 3
    assert history.batches == 7
    assert history.steps_per_second == pytest.approx(7 / history.seconds, rel=tol(np.float64, "ulp")["rtol"])


class CountingLoss:
    """mse, counting the calls that score the held-out data (its batch size tells them apart)."""

    def __init__(self, eval_batch):
        self.eval_batch = eval_batch
        self.eval_calls = 0

    def __call__(self, out, target, last_step=False):
        if out.shape[1] == self.eval_batch:
            self.eval_calls += 1
        return fb.losses.mse(out, target, last_step=last_step)


@pytest.mark.parametrize("steps, eval_every, log_every, expected", [
    (6, 2, 3, [1, 3, 5]),      # the last batch is an eval batch and a log batch
    (6, 2, 4, [1, 3, 5]),      # ... an eval batch, logged only because it is the last
    (5, 2, 3, [1, 3, 4]),      # not an eval batch: one final evaluation
    (5, None, 2, [4]),         # no periodic evaluation: the final one alone
])
def test_fit_evaluates_each_batch_once_whatever_log_every(backend, steps, eval_every, log_every, expected):
    """The final evaluation runs only when the last batch has none yet: eval_step holds each
    batch index once, and the held-out data is scored once per entry."""
    model = _model(backend)
    batches = [_data(5, 2, seed=s) for s in range(steps)]
    eval_x, eval_y = _data(5, 3, seed=99)
    loss = CountingLoss(eval_batch=3)
    history = fit(model, batches, steps=steps, optimizer=Recorder(), loss=loss,
                  eval_data=(eval_x, eval_y), eval_every=eval_every, log_every=log_every,
                  progress=False)
    assert history.eval_step == expected
    assert len(history.eval_loss) == len(expected) == loss.eval_calls


def test_fit_logs_the_last_batch_when_the_batches_run_out_early(backend):
    """steps=10 with 5 batches: the last batch trained (4) is logged, and evaluated once."""
    model = _model(backend)
    batches = [_data(5, 2, seed=s) for s in range(5)]
    history = fit(model, batches, steps=10, optimizer=Recorder(), eval_data=batches[0],
                  eval_every=2, log_every=3, progress=False)
    assert history.batches == 5
    assert history.step == [0, 3, 4]
    assert history.eval_step == [1, 3, 4]


def test_fit_checks_log_every():
    model = _model("numpy")
    with pytest.raises(ValueError, match="log_every"):
        fit(model, [_data(5, 2)], steps=1, optimizer=Recorder(), log_every=0, progress=False)
    with pytest.raises(TypeError, match="log_every"):
        fit(model, [_data(5, 2)], steps=1, optimizer=Recorder(), log_every=1.5, progress=False)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_fit_with_clip_norm_equals_clip_then_step(backend, dtype, tol):
    """fit folds the global-norm clip into an fb.optim step; the parameters and the logged
    norms equal those of clip_grad_norm followed by a plain step."""
    batches = [_data(7, 3, seed=s) for s in range(6)]
    batches = [(x.astype(dtype), y.astype(dtype)) for x, y in batches]
    folded = fb.RNN(3, 6, num_layers=2, output_size=2, dtype=dtype, seed=3, backend=backend)
    history = fit(folded, batches, steps=6, optimizer=fb.optim.Adam(folded.params, lr=1e-2),
                  clip_norm=0.05, progress=False)
    manual = fb.RNN(3, 6, num_layers=2, output_size=2, dtype=dtype, seed=3, backend=backend)
    opt = fb.optim.Adam(manual.params, lr=1e-2)
    norms = []
    for x, y in batches:
        out, _ = manual.forward(x)
        _, d_out = fb.losses.mse(out, y)
        g = manual.backward(d_out)
        norms.append(fb.clip_grad_norm(g.params, 0.05))
        opt.step(g.params)
    assert max(norms) > 0.05, "the clip never clipped: the comparison would be void"
    np.testing.assert_allclose(history.grad_norm, norms, **tol(dtype, "split"))
    for name in manual.params:
        np.testing.assert_allclose(folded.params[name], manual.params[name], **tol(dtype, "split"),
                                   err_msg=name)
