"""One BPTT training step of each cell: compiled kernels, NumPy backend, PyTorch.

A step is forward + backward, float32, one layer, no readout, with a fixed random d_out
(fastbptt.bench builds the steps; ``python -m fastbptt bench --cell C`` times the same ones
without pytest). Each cell and shape is a benchmark group, so its implementations stand side
by side; each implementation runs all its rounds in one go, after the ``settle`` pause of
conftest.py. torch's LSTM runs oneDNN's fused kernel; its RNN and GRU the plain path.

    python -m pytest benchmarks/test_bench_cells.py -p no:cacheprovider \\
        --benchmark-columns=median,iqr,rounds --benchmark-group-by=group [-k lstm]

Timings are reported, never asserted.
"""
import pytest

from fastbptt import bench

CELLS = ["tanh", "lstm", "gru"]
CASES = [pytest.param(cell, shape, impl, id=f"{cell}-{shape}-{impl}")
         for cell in CELLS for shape in bench.SHAPES for impl in bench.IMPLEMENTATIONS]


def test_sgemm_reference(benchmark, record):
    """The machine's sgemm rate through scipy's OpenBLAS, the BLAS the compiled kernels call."""
    run, flops = bench.make_sgemm()
    M, K, N = bench.sgemm_dims()
    benchmark.group = "sgemm"
    benchmark.extra_info.update(m=M, k=K, n=N, flops=flops)
    benchmark.pedantic(run, rounds=20, warmup_rounds=2)
    record(benchmark, "sgemm")


@pytest.mark.parametrize("cell, shape_name, impl", CASES)
def test_training_step(run_step, cell, shape_name, impl):
    run_step(f"{cell}-{shape_name}", impl, shape_name, cell)
