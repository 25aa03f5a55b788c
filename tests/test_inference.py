"""predict and step: forward's outputs without a cache, in chunks of steps or one step at a time.

predict against forward (every cell x 1-2 layers x uni/bidirectional x readout or not x h0 or
not x lengths or not, with sequences long enough to run in several chunks), step chained against
predict, predict's memory at T = 10,000 against forward's, and the errors of bad input.
"""
import itertools
import tracemalloc

import numpy as np
import pytest

import fastbptt as fb
from fastbptt import inference

CELLS = ("tanh", "relu", "lstm", "gru")
GATES = {"tanh": 1, "relu": 1, "lstm": 4, "gru": 3}
I, H, O = 5, 8, 3


@pytest.fixture
def small_chunks(monkeypatch):
    """Chunks of a few steps, so that short sequences run in many of them."""
    monkeypatch.setattr(inference, "WHOLE_SEQUENCE_ELEMENTS", 0)
    monkeypatch.setattr(inference, "WHOLE_SEQUENCE_STEPS", 0)
    monkeypatch.setattr(inference, "CHUNK_ROWS", 16)
    monkeypatch.setattr(inference, "MAX_CHUNK_STEPS", 8)


def make_model(cell, backend, dtype=np.float32, **kw):
    return fb.RNN(I, H, cell=cell, backend=backend, dtype=dtype, seed=7, **kw)


def random_state(rng, model, B):
    shape = (model.num_directions * model.num_layers, B, model.hidden_size)
    if model.cell == "lstm":
        return tuple(rng.uniform(-1, 1, shape).astype(model.dtype) for _ in range(2))
    return rng.uniform(-1, 1, shape).astype(model.dtype)


def as_list(out, h_n):
    return [out] + (list(h_n) if isinstance(h_n, tuple) else [h_n])


@pytest.mark.parametrize("with_lengths", [False, True], ids=["padded", "lengths"])
@pytest.mark.parametrize("with_state", [False, True], ids=["zero_state", "h0"])
@pytest.mark.parametrize("output_size", [None, O], ids=["states", "readout"])
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("num_layers", [1, 2], ids=["L1", "L2"])
@pytest.mark.parametrize("cell", CELLS)
def test_predict_matches_forward(cell, num_layers, bidirectional, output_size, with_state,
                                 with_lengths, backend, rng, assert_close, small_chunks):
    model = make_model(cell, backend, num_layers=num_layers, bidirectional=bidirectional,
                       output_size=output_size)
    for T, B in ((3, 2), (60, 3)):
        if T == 60:   # the long case must run in several chunks, or it tests nothing more
            assert inference.chunk_steps(T, B, GATES[cell] * H) < T // 4
        x = rng.standard_normal((T, B, I)).astype(np.float32)
        h0 = random_state(rng, model, B) if with_state else None
        lengths = None
        if with_lengths:
            lengths = rng.integers(1, T + 1, B)
            lengths[0] = max(1, T // 3)   # one sequence ends mid-sequence, in an early chunk
        expected = as_list(*model.forward(x, h0, lengths))
        cache = model.cache_nbytes()
        got = as_list(*model.predict(x, h0, lengths))
        for name, a, e in zip(("out", "h_n", "c_n"), got, expected):
            assert_close(a, e, np.float32, f"{name} at T={T}", kind="split")
        assert model.cache_nbytes() == cache     # forward's cache is left as it was


def test_predict_float64_matches_forward(backend, rng, assert_close, small_chunks):
    model = make_model("lstm", backend, np.float64, num_layers=2, output_size=O)
    x = rng.standard_normal((60, 2, I))
    h0 = random_state(rng, model, 2)
    lengths = np.array([60, 25])
    for a, e in zip(as_list(*model.predict(x, h0, lengths)), as_list(*model.forward(x, h0, lengths))):
        assert_close(a, e, np.float64, "predict", kind="split")


def test_predict_leaves_its_inputs_unchanged_and_takes_strided_x(backend, rng, assert_close,
                                                                  small_chunks):
    model = make_model("gru", backend, num_layers=2, bidirectional=True, output_size=O)
    wide = rng.standard_normal((50, 8, 2 * I)).astype(np.float32)
    x = wide[:, :, ::2]                      # not contiguous
    h0 = random_state(rng, model, 8)
    lengths = rng.integers(1, 51, 8)
    copies = [wide.copy(), h0.copy(), lengths.copy()]
    params = {k: v.copy() for k, v in model.params.items()}
    got = as_list(*model.predict(x, h0, lengths))
    for before, after in zip(copies, (wide, h0, lengths)):
        np.testing.assert_array_equal(before, after)
    for name, value in model.params.items():
        np.testing.assert_array_equal(value, params[name], err_msg=name)
    expected = as_list(*model.forward(np.ascontiguousarray(x), h0, lengths))
    for a, e in zip(got, expected):
        assert_close(a, e, np.float32, "predict", kind="split")


@pytest.mark.parametrize("output_size", [None, O], ids=["states", "readout"])
@pytest.mark.parametrize("num_layers", [1, 2], ids=["L1", "L2"])
@pytest.mark.parametrize("cell", CELLS)
def test_steps_chained_equal_predict(cell, num_layers, output_size, backend, rng, assert_close):
    model = make_model(cell, backend, num_layers=num_layers, output_size=output_size)
    T, B = 40, 3
    x = rng.standard_normal((T, B, I)).astype(np.float32)
    for h0 in (None, random_state(rng, model, B)):
        out, h_n = model.predict(x, h0)
        state, ys = h0, []
        for t in range(T):
            y, state = model.step(x[t], state)
            ys.append(y)
        assert_close(np.stack(ys), out, np.float32, "y_t", kind="split")
        for name, a, e in zip(("h", "c"), as_list(None, state)[1:], as_list(None, h_n)[1:]):
            assert_close(a, e, np.float32, f"state {name}", kind="split")


def test_step_does_not_modify_the_state_passed_in(backend, rng):
    model = make_model("lstm", backend, num_layers=2)
    state = random_state(rng, model, 2)
    before = [s.copy() for s in state]
    _, new = model.step(rng.standard_normal((2, I)).astype(np.float32), state)
    for b, s, n in zip(before, state, new):
        np.testing.assert_array_equal(b, s)
        assert not np.shares_memory(s, n)


def test_step_refuses_a_bidirectional_model():
    model = fb.RNN(I, H, bidirectional=True)
    with pytest.raises(ValueError, match="unidirectional"):
        model.step(np.zeros((1, I), np.float32))


# --------------------------------------------------------------------------- memory


def peak_bytes(fn):
    """(result, the peak of numpy's traced allocations during fn, in bytes)."""
    tracemalloc.start()
    tracemalloc.reset_peak()
    base = tracemalloc.get_traced_memory()[0]
    try:
        result = fn()
        peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
    return result, peak


@pytest.mark.parametrize("cell, output_size", [("tanh", None), ("lstm", 4)])
def test_predict_memory_at_long_sequences_is_one_percent_of_forwards(cell, output_size, rng):
    """Besides its output, predict holds under 1% of what forward does (its cache and its
    output) at T = 10,000: a chunk of steps per layer, not the sequence. (The chunking is the
    same on either backend: this runs on the default one.)"""
    T, B = 10_000, 4
    model = fb.RNN(8, 32, cell=cell, num_layers=2, output_size=output_size, seed=1)
    x = rng.standard_normal((T, B, 8)).astype(np.float32)
    model.predict(x[:2])     # what a first call allocates once (imports, closures) aside
    (out, _), peak = peak_bytes(lambda: model.predict(x))
    extra = peak - out.nbytes
    f_out, _ = model.forward(x)
    forward_bytes = model.cache_nbytes() + (0 if f_out.base is not None else f_out.nbytes)
    assert forward_bytes > 0
    assert extra <= 0.01 * forward_bytes, (extra, forward_bytes)


# --------------------------------------------------------------------------- bad input


@pytest.fixture
def lstm():
    return fb.RNN(I, H, cell="lstm", num_layers=2, output_size=O)


@pytest.mark.parametrize("x, error, words", [
    (np.zeros((4, 2, I)), TypeError, "x must have dtype float32"),
    (np.zeros((4, 2, I + 1), np.float32), ValueError, r"x must have shape \(\*, \*, 5\)"),
    (np.zeros((4, I), np.float32), ValueError, "x must have shape"),
    (np.full((4, 2, I), np.nan, np.float32), ValueError, "x contains NaN"),
    ([[[0.0] * I]], TypeError, "x must be a numpy.ndarray"),
])
def test_predict_bad_x_names_it(lstm, x, error, words):
    with pytest.raises(error, match=words):
        lstm.predict(x)


def test_predict_bad_state_and_lengths_name_them(lstm):
    x = np.zeros((4, 2, I), np.float32)
    good = np.zeros((2, 2, H), np.float32)
    with pytest.raises(TypeError, match="h0 of an LSTM must be a pair"):
        lstm.predict(x, good)
    with pytest.raises(ValueError, match=r"h0\[1\] must have shape"):
        lstm.predict(x, (good, good[:1]))
    with pytest.raises(ValueError, match=r"h0\[0\] contains NaN"):
        lstm.predict(x, (np.full_like(good, np.inf), good))
    with pytest.raises(ValueError, match="lengths must lie in"):
        lstm.predict(x, lengths=[5, 1])
    with pytest.raises(ValueError, match="lengths must have shape"):
        lstm.predict(x, lengths=[1, 2, 3])
    with pytest.raises(TypeError, match="lengths must hold integers"):
        lstm.predict(x, lengths=[1.5, 2.0])


def test_step_bad_input_names_it(lstm):
    good = np.zeros((2, 2, H), np.float32)
    with pytest.raises(ValueError, match=r"x_t must have shape \(\*, 5\)"):
        lstm.step(np.zeros((1, 2, I), np.float32))
    with pytest.raises(TypeError, match="x_t must have dtype float32"):
        lstm.step(np.zeros((2, I)))
    with pytest.raises(ValueError, match=r"state\[0\] must have shape \(2, 2, 8\)"):
        lstm.step(np.zeros((2, I), np.float32), (good[:, :1], good))
    with pytest.raises(TypeError, match="state of an LSTM must be a pair"):
        lstm.step(np.zeros((2, I), np.float32), good)


def test_predict_runs_on_parameters_rebound_in_another_memory_order(lstm, rng):
    """model.params copies a rebound array into its view of the flat buffer (Fortran order
    included), so predict sees the new values through the same buffer forward reads."""
    x = rng.standard_normal((4, 2, I)).astype(np.float32)
    new = rng.uniform(-0.3, 0.3, lstm.params["weight_hh_l1"].shape).astype(np.float32)
    lstm.params["weight_hh_l1"] = np.asfortranarray(new)
    assert np.array_equal(lstm.params["weight_hh_l1"], new)
    out, _ = lstm.predict(x)
    expected, _ = lstm.forward(x)
    np.testing.assert_array_equal(out, expected)
    with pytest.raises(TypeError, match=r"weight_hh_l1"):
        lstm.params["weight_hh_l1"] = np.zeros((4 * H, H))


def test_chunks_cover_whole_small_sequences_and_bounded_rows_otherwise():
    assert inference.chunk_steps(25, 1, 4 * 100) == 25        # a char-RNN sequence: one chunk
    assert inference.chunk_steps(100, 32, 4 * 128) == 100     # a short sequence: one chunk
    for T, B, width in itertools.product((1000, 10_000), (1, 4, 64, 500), (128, 2048)):
        C = inference.chunk_steps(T, B, width)
        assert 1 <= C <= T
        assert C == inference.MAX_CHUNK_STEPS or C * B >= inference.CHUNK_ROWS
        assert C <= inference.MAX_CHUNK_STEPS and ((C - 1) * B < inference.CHUNK_ROWS or C == 1)
