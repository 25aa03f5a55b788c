"""The compiled kernels' pool of large work arrays (``_pool.pxi``): memory is reused only once
nothing views it any more, and what is live is visible to tracemalloc as NumPy's own arrays
are."""
import gc
import tracemalloc

import numpy as np
import pytest

import fastbptt as fb

# (T, B, I, H) whose LSTM cache (states and gates, 1.3 to 2.6 MB each) is taken from the pool.
SHAPE = (100, 16, 3, 100)


def lstm_and_input(rng, compiled_backend):
    T, B, I, H = SHAPE
    model = fb.RNN(I, H, cell="lstm", dtype=np.float32, seed=3, backend=compiled_backend)
    return model, rng.standard_normal((T, B, I)).astype(np.float32)


def test_arrays_a_caller_still_holds_are_not_reused_by_later_calls(rng, compiled_backend):
    """Outputs and gradients of one step that the caller keeps are unchanged by the steps after
    it, however many: the pool hands out only memory that nothing views."""
    model, x = lstm_and_input(rng, compiled_backend)
    out, h_n = model.forward(x)
    g = model.backward(np.ones_like(out))
    kept = [out, h_n[0], g.flat, g.params["weight_hh_l0"]]
    copies = [a.copy() for a in kept]
    for k in range(4):
        out2, _ = model.forward(x * (k + 2.0))
        model.backward(out2)
    for a, c in zip(kept, copies):
        np.testing.assert_array_equal(a, c)


def test_memory_released_by_one_model_is_taken_by_the_next(rng, compiled_backend,
                                                          compiled_kernels):
    """When a step's arrays die, their memory waits in the pool (bounded) and the next step of
    that shape takes it instead of asking malloc for fresh pages."""
    model, x = lstm_and_input(rng, compiled_backend)
    out, _ = model.forward(x)
    model.backward(np.ones_like(out))
    del model, out
    gc.collect()
    idle_before, bytes_before = compiled_kernels._pool_state()
    T, B, _, H = SHAPE
    assert bytes_before >= T * B * 4 * H * 4        # at least the gates came back
    assert bytes_before <= 256 * 1024 * 1024
    model, x = lstm_and_input(rng, compiled_backend)
    out, _ = model.forward(x)                       # its cache comes from the pool
    idle_during, bytes_during = compiled_kernels._pool_state()
    assert idle_during < idle_before
    assert bytes_during <= bytes_before - T * B * 4 * H * 4


def _owner(a):
    while isinstance(a, np.ndarray) and a.base is not None:
        a = a.base
    return a


def test_backward_flat_gradients_come_from_the_pool(compiled_backend, compiled_kernels):
    """backward's flat gradient buffer (every parameter's gradient in one array) is pool
    memory, as the kernels' own work arrays are: when a step's gradients die it waits in the
    pool for the next backward, instead of being pages NumPy maps and zeroes afresh at every
    call (33 MB at H = 1024)."""
    model = fb.RNN(128, 256, cell="lstm", dtype=np.float32, seed=0, backend=compiled_backend)
    assert model.flat_params.nbytes >= 512 * 1024     # past the pool's smallest block
    x = np.random.default_rng(0).standard_normal((5, 2, 128)).astype(np.float32)
    out, _ = model.forward(x)
    g = model.backward(np.ones_like(out))
    block = _owner(g.flat)
    assert type(block) is type(_owner(compiled_kernels.empty((1 << 20,), np.float32)))
    assert type(block) is not np.ndarray
    expected = g.flat.copy()
    out, _ = model.forward(x)
    np.testing.assert_array_equal(model.backward(np.ones_like(out)).flat, expected)


def test_tracemalloc_counts_the_pooled_arrays_that_are_alive(rng, compiled_backend):
    """A forward's cache from the pool shows in tracemalloc's traced memory while alive, as
    NumPy's own allocations do."""
    model, x = lstm_and_input(rng, compiled_backend)
    out, _ = model.forward(x)                      # warm the pool
    del out
    T, B, _, H = SHAPE
    gates_bytes = T * B * 4 * H * 4
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        out, _ = model.forward(x)
        alive = tracemalloc.get_traced_memory()[0] - base
    finally:
        tracemalloc.stop()
    assert alive >= gates_bytes


@pytest.mark.parametrize("cell", ["tanh", "lstm", "gru"])
def test_steps_with_pooled_arrays_equal_the_oracle_step_after_step(cell, rng, compiled_backend,
                                                                   assert_close):
    """Reused memory carries nothing over: each of several steps at shapes that go through
    the pool (and one that shrinks and grows the batch) equals the NumPy backend's."""
    T, I, H = 60, 3, 96
    fast = fb.RNN(I, H, cell=cell, dtype=np.float32, seed=5, backend=compiled_backend)
    oracle = fb.RNN(I, H, cell=cell, dtype=np.float32, seed=5, backend="numpy")
    for B in (24, 24, 8, 24):
        x = rng.standard_normal((T, B, I)).astype(np.float32)
        kind = "oracle" if cell == "tanh" else "gated"
        outs = [m.forward(x)[0] for m in (fast, oracle)]
        assert_close(outs[0], outs[1], np.float32, f"out at B={B}", kind=kind)
        grads = [m.backward(np.sin(outs[1])) for m in (fast, oracle)]
        assert_close(grads[0].flat, grads[1].flat, np.float32, f"gradients at B={B}", kind=kind)
