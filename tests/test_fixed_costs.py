"""The plain per-step loops that spare a single sequence's kernels their per-call packing.

A float32 forward of one sequence (B = 1) at small sizes multiplies s_{t-1} by W_hhᵀ as dot
products along W_hh's rows as it is stored (the "dot" path), summed in 8 lanes with k's
tail as one more masked chunk: every H below, at and past the lane width, with and without a
tail, and rows of W_hh past a multiple of eight, against the NumPy oracle.
"""
import numpy as np
import pytest

from _support import assert_layer_matches_oracle

CELLS = ["tanh", "relu", "lstm", "gru"]
GATES = {"tanh": 1, "relu": 1, "lstm": 4, "gru": 3}


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("H", [3, 8, 13, 16, 100])
@pytest.mark.parametrize("sizes", [None, [1, 1, 1, 1, 0]], ids=["full", "lengths"])
def test_single_sequence_dot_path_matches_the_oracle(compiled_kernels, cell, H, sizes, rng,
                                                     assert_close, layer_arrays):
    assert compiled_kernels._step_path(np.float32, GATES[cell], 1, H, False) == "dot"
    a = layer_arrays(rng, cell, 5, 1, 6, H, np.float32)
    sizes = None if sizes is None else np.array(sizes, dtype=np.intp)
    assert_layer_matches_oracle(compiled_kernels, cell, a, sizes, np.float32, f"H={H}",
                                assert_close, check_norms=False)


@pytest.mark.parametrize("H", [8, 13, 100])
def test_dot_path_sums_every_weight(compiled_kernels, H):
    """One hot state against one hot weight at each position of W_hh in turn (sampled):
    the product finds it, also in a row past the last group of eight and in k's tail."""
    h0 = np.zeros((1, H), np.float32)
    x = np.zeros((1, 1, 1), np.float32)
    w_ih = np.zeros((H, 1), np.float32)
    b = np.zeros(H, np.float32)
    for n, k in [(0, 0), (H - 1, H - 1), (H - 1, 0), (0, H - 1), (H // 2, H // 3)]:
        w_hh = np.zeros((H, H), np.float32)
        w_hh[n, k] = 0.5
        state = h0.copy()
        state[0, k] = 1.0
        hs = compiled_kernels.elman_forward(x, state, w_ih, w_hh, b, b, True)   # relu: exact
        want = np.zeros(H, np.float32)
        want[n] = 0.5
        np.testing.assert_array_equal(hs[1, 0], want, err_msg=f"W_hh[{n}, {k}]")
