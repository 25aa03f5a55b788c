"""Every code path of the compiled time loops against the NumPy oracle.

The kernels choose how to run a step's recurrent product by its size (``_kernels._tuning``):
a plain loop for tiny products, a row-major gemm, or a gemm with the batch as BLAS's m and
a transposed add into place. The test problems elsewhere are small, so most of them take
the first two; here each path is forced on the same small problems, with and without
variable lengths (steps down to one running row) and for a single sequence (B = 1, where
the transposed product is written in place).
"""
import numpy as np
import pytest

from fastbptt import _reference

CELLS = ["tanh", "relu", "lstm", "gru"]
# (small_step, transposed_step): which thresholds force which path
PATHS = {
    "loop": (1 << 60, 1 << 60),        # every Elman product in the plain loop (B = 1 gated too)
    "gemm": (0, 1 << 60),              # row-major gemm everywhere
    "transposed": (0, 1),              # batch-as-m gemm and transposed add everywhere
}


@pytest.fixture(params=list(PATHS))
def path(request, compiled_kernels):
    previous = compiled_kernels._tuning(*PATHS[request.param])
    yield request.param
    compiled_kernels._tuning(*previous)


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("B, sizes", [(5, None), (5, [5, 5, 4, 2, 1, 1]), (1, None), (1, [1, 1, 1, 0, 0, 0])],
                         ids=["B5", "B5-lengths", "B1", "B1-lengths"])
def test_every_path_matches_the_oracle(compiled_kernels, path, cell, B, sizes, dtype, rng, assert_close,
                                       layer_arrays, run_layer):
    a = layer_arrays(rng, cell, 6, B, 3, 7, dtype)
    sizes = None if sizes is None else np.array(sizes, dtype=np.intp)
    kind = "gated" if cell in ("lstm", "gru") else "oracle"
    expected = run_layer(_reference, cell, a, sizes)
    actual = run_layer(compiled_kernels, cell, a, sizes)
    for what, exp, act in zip(("cache", "gradients"), expected[:2], actual[:2]):
        for i, (e, g) in enumerate(zip(exp, act)):
            assert_close(g, e, dtype, f"{path} {cell} {what}[{i}]", kind=kind)
    assert_close(actual[2], expected[2], dtype, f"{path} {cell} step norms", kind=kind)


def test_tuning_returns_and_restores_the_thresholds(compiled_kernels):
    before = compiled_kernels._tuning()
    assert compiled_kernels._tuning(small_step=7, transposed_step=9) == before
    assert compiled_kernels._tuning(*before) == (7, 9)
    assert compiled_kernels._tuning() == before
