"""Every compiled build this CPU runs, side by side: one layer's forward and backward over the
kernels of the baseline (SSE2), AVX2 and AVX-512 builds, float32, on the kernels' team.

The host runs the widest build it has; the others run only on CPUs without its instructions,
where nobody here times them. Their results are tested (the suites run per build); this puts
their times side by side, so that a build slower than its vectors explain shows up. In
2026-12 the AVX2 build's single-sequence backward ran 6-7x slower than the AVX-512 build's
on the same Zen 4, because GCC kept one loop's accumulators on the stack in that build only.

The shapes (T, B, I, H): the char-RNN's single sequence (the backward's axpy loop, the
forward's dot products), the adding problem's two inputs (the narrow hoisted products) and
the bench's small batch (the register tiles).

    python -m pytest benchmarks/test_bench_builds.py -p no:cacheprovider \\
        --benchmark-columns=median,iqr,rounds --benchmark-group-by=group

Timings are reported, never asserted.
"""
import numpy as np
import pytest

from fastbptt import _backend, _cells

BUILDS = _backend.compiled_builds()
pytestmark = pytest.mark.skipif(not BUILDS, reason="the compiled kernels are not in use")

SHAPES = {"charrnn": (25, 1, 65, 100), "adding": (100, 16, 2, 100), "small": (100, 32, 32, 128)}


def layer_step(kernels, cell_name, shape, seed=0):
    """A callable running one layer's forward and backward (dx included) on ``kernels``, the
    same seeded float32 operands for every build."""
    T, B, I, H = shape
    cell = _cells.CELLS[cell_name]
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((T, B, I)).astype(np.float32)
    w_ih = (0.1 * rng.standard_normal((cell.gates * H, I))).astype(np.float32)
    w_hh = (0.1 * rng.standard_normal((cell.gates * H, H))).astype(np.float32)
    b_ih, b_hh = (np.zeros(cell.gates * H, np.float32) for _ in range(2))
    state0 = tuple(np.zeros((B, H), np.float32) for _ in cell.states)
    d_out = rng.standard_normal((T, B, H)).astype(np.float32)

    def step():
        cache = cell.forward(kernels, x, state0, w_ih, w_hh, b_ih, b_hh)
        return cell.backward(kernels, d_out, None, x, cache, w_ih, w_hh)

    return step


@pytest.mark.parametrize("level", list(BUILDS))
@pytest.mark.parametrize("cell", ["tanh", "lstm", "gru"])
@pytest.mark.parametrize("shape_name", list(SHAPES))
def test_layer_step_of_each_build(benchmark, shape_name, cell, level):
    benchmark.group = f"builds-{cell}-{shape_name}"
    benchmark.extra_info.update(zip("TBIH", SHAPES[shape_name]), build=level)
    benchmark(layer_step(BUILDS[level], cell, SHAPES[shape_name]))
