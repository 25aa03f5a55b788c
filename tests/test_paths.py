"""Every code path of the compiled time loops against the NumPy oracle.

The kernels choose how to run a step's recurrent product by its size (``_kernels._tuning``):
a plain loop for tiny products, a gemm (float32: fastbptt's own on packed weights; float64:
BLAS row-major, or with the batch as BLAS's m and a transposed add into place), and float32
time loops with few weights run in shards of the batch, one per thread. The test problems
elsewhere are small, so most of them take the first paths; here each path is forced on the
same small problems, with and without variable lengths (steps down to one running row), for
a single sequence (B = 1, where the transposed product is written in place) and for a batch
large enough to shard (B = 19).
"""
import numpy as np
import pytest

from _support import assert_layer_matches_oracle, run_layer

CELLS = ["tanh", "relu", "lstm", "gru"]
# (small_step, transposed_step, shard_step[, pass_units, small_rows]): which thresholds force
# which path. A gated
# cell's single sequence (B = 1) always takes a plain loop at these sizes (SMALL_GATED_STEP
# is not tunable), except float64's forward; the float32 forward's plain loop is the dot
# form ("dot"), the others' the axpy form ("loop"): test_paths_route_as_named.
PATHS = {
    # every Elman product in the plain loop, float32's of many rows too (B = 1 gated too)
    "loop": (1 << 60, 1 << 60, 0, None, 1 << 60),
    "gemm": (0, 1 << 60, 0),           # a gemm per step (float32 own, float64 BLAS), never sharded
    "transposed": (0, 1, 0),           # float64: batch-as-m gemm and transposed add
    "sharded": (0, 1 << 60, 1 << 60),  # float32, B >= 16: the time loop in shards of rows
    # a gemm per step, the gated cells' element-wise pass shared by rows among the team
    "shared-pass": (0, 1 << 60, 0, 0),
}
GATES = {"tanh": 1, "relu": 1, "lstm": 4, "gru": 3}


def expected_step_path(path, cell, dtype, B, backward):
    """The per-step product each PATHS setting is meant to force, for H = 7: what the
    thresholds promise, written out here rather than asked of the kernels."""
    small = (cell in ("tanh", "relu") and path == "loop") or (cell in ("lstm", "gru") and B == 1)
    if small and dtype == np.float32 and not backward:
        return "dot"
    if small and (backward or cell in ("tanh", "relu")):
        return "loop"
    if dtype == np.float32:
        return "packed"
    return "transposed" if path == "transposed" else "blas"
RAGGED_19 = [19, 19, 17, 12, 12, 3]


@pytest.fixture(params=list(PATHS))
def path(request, compiled_kernels):
    previous = compiled_kernels._tuning(*PATHS[request.param])
    yield request.param
    compiled_kernels._tuning(*previous)


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("B, sizes", [(5, None), (5, [5, 5, 4, 2, 1, 1]), (1, None), (1, [1, 1, 1, 0, 0, 0]),
                                      (19, None), (19, RAGGED_19)],
                         ids=["B5", "B5-lengths", "B1", "B1-lengths", "B19", "B19-lengths"])
def test_every_path_matches_the_oracle(compiled_kernels, path, cell, B, sizes, dtype, rng, assert_close,
                                       layer_arrays):
    a = layer_arrays(rng, cell, 6, B, 3, 7, dtype)
    sizes = None if sizes is None else np.array(sizes, dtype=np.intp)
    assert_layer_matches_oracle(compiled_kernels, cell, a, sizes, dtype, path, assert_close)


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("B", [1, 5, 19])
@pytest.mark.parametrize("backward", [False, True], ids=["forward", "backward"])
def test_paths_route_as_named(compiled_kernels, path, cell, B, backward, dtype):
    """Each PATHS setting really sends the per-step products of the problems above down the
    path it is named for (else the oracle test would check one path several times), and only
    the "sharded" one shards."""
    got = compiled_kernels._step_path(dtype, GATES[cell], B, 7, backward)
    assert got == expected_step_path(path, cell, dtype, B, backward)
    if compiled_kernels.threads() >= 2:
        # _shard_bounds gives a float32 packed loop's shards; a loop on any other path runs whole
        sharded = got == "packed" and compiled_kernels._shard_bounds(B, GATES[cell] * 7 * 7) is not None
        assert sharded == (path == "sharded" and B == 19 and dtype == np.float32)


def test_default_thresholds_route_by_size(compiled_kernels):
    """Without forcing: a char-RNN step (1x100 @ 100x100, 10K multiply-adds) in the plain
    loop (float32's forward in dot form, on W_hh as stored; the LSTM's too); a batch of 32 at H = 128 on the own gemm (float32) or BLAS (float64, 16K weights);
    float64 from 48K weights (H = 256) transposed."""
    assert compiled_kernels._step_path(np.float32, 1, 1, 100, False) == "dot"
    assert compiled_kernels._step_path(np.float64, 1, 1, 100, False) == "loop"
    assert compiled_kernels._step_path(np.float32, 4, 1, 100, False) == "dot"
    assert compiled_kernels._step_path(np.float64, 4, 1, 100, False) == "blas"
    assert compiled_kernels._step_path(np.float32, 1, 1, 100, True) == "loop"
    assert compiled_kernels._step_path(np.float32, 1, 32, 128, False) == "packed"
    assert compiled_kernels._step_path(np.float64, 1, 32, 128, True) == "blas"
    assert compiled_kernels._step_path(np.float64, 1, 32, 256, True) == "transposed"
    assert compiled_kernels._step_path(np.float32, 4, 32, 128, False) == "packed"
    assert compiled_kernels._step_path(np.float32, 4, 1, 100, True) == "loop"
    # float32 Elman steps of a few rows, small as they are, on the own gemm; float64's in the loop
    for backward in (False, True):
        assert compiled_kernels._step_path(np.float32, 1, 2, 32, backward) == "packed"
        assert compiled_kernels._step_path(np.float32, 1, 32, 32, backward) == "packed"
        assert compiled_kernels._step_path(np.float64, 1, 32, 32, backward) == "loop"


def test_tuning_returns_and_restores_the_thresholds(compiled_kernels):
    before = compiled_kernels._tuning()
    assert compiled_kernels._tuning(small_step=7, transposed_step=9, shard_step=11,
                                    pass_units=13, small_rows=15) == before
    assert compiled_kernels._tuning(*before) == (7, 9, 11, 13, 15)
    assert compiled_kernels._tuning() == before


@pytest.mark.parametrize("sizes", [None, RAGGED_19], ids=["padded", "lengths"])
def test_sharded_path_really_shards(compiled_kernels, sizes):
    """The "sharded" path above runs B = 19 in shards (else it would test nothing new), each
    shard carrying about the same work: equal rows, or equal sums of lengths."""
    if compiled_kernels.threads() < 2:
        pytest.skip("OpenMP allows one thread here: the time loops never shard")
    previous = compiled_kernels._tuning(*PATHS["sharded"])
    try:
        sizes = None if sizes is None else np.array(sizes, dtype=np.intp)
        bounds = compiled_kernels._shard_bounds(19, 7 * 7, sizes)
    finally:
        compiled_kernels._tuning(*previous)
    assert bounds is not None and bounds[0] == 0 and bounds[-1] == 19 and len(bounds) >= 3
    assert np.all(np.diff(bounds) > 0)
    lengths = (np.full(19, 6) if sizes is None
               else np.count_nonzero(sizes[:, None] > np.arange(19), axis=0))
    work = [lengths[a:b].sum() for a, b in zip(bounds[:-1], bounds[1:])]
    assert max(work) - min(work) <= lengths.max()     # balanced to within one row


def test_large_weights_do_not_shard(compiled_kernels):
    assert compiled_kernels._shard_bounds(64, 1 << 40) is None


@pytest.mark.parametrize("cell", ["lstm", "gru"])
@pytest.mark.parametrize("sizes", [None, RAGGED_19], ids=["padded", "lengths"])
def test_shared_pass_gives_the_same_bits_as_one_thread_passes(compiled_kernels, cell, sizes, rng,
                                                              layer_arrays):
    """A gated cell's element-wise pass shared by rows among the team (each row's arithmetic
    unchanged) leaves every cache array, gradient and step norm as the pass on one thread
    does, to the bit, with the per-step clip too."""
    a = layer_arrays(rng, cell, 6, 19, 3, 7, np.float32)
    sizes = None if sizes is None else np.array(sizes, dtype=np.intp)
    results = {}
    for name in ("gemm", "shared-pass"):
        previous = compiled_kernels._tuning(*PATHS[name])
        try:
            results[name] = run_layer(compiled_kernels, cell, a, sizes)
        finally:
            compiled_kernels._tuning(*previous)
    for one, shared in zip(results["gemm"][0] + results["gemm"][1] + [results["gemm"][2]],
                           results["shared-pass"][0] + results["shared-pass"][1]
                           + [results["shared-pass"][2]]):
        np.testing.assert_array_equal(shared, one)
