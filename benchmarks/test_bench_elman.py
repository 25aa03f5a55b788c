"""One BPTT training step of an Elman layer: compiled kernels, NumPy backend, PyTorch.

A step is forward + backward, float32, one layer, no readout, with a fixed random d_out
(fastbptt.bench builds the steps; ``python -m fastbptt bench`` times the same ones without
pytest). Each shape is a benchmark group, so its implementations stand side by side; each
implementation runs all its rounds in one go, after the ``settle`` pause of conftest.py.

    python -m pytest benchmarks -p no:cacheprovider \\
        --benchmark-columns=median,iqr,rounds --benchmark-group-by=group

Timings are reported, never asserted.
"""
import pytest

from fastbptt import bench

CASES = [pytest.param(shape, impl, id=f"{shape}-{impl}")
         for shape in bench.SHAPES for impl in bench.IMPLEMENTATIONS]


def test_sgemm_reference(benchmark, record):
    """The machine's sgemm rate through scipy's OpenBLAS, the BLAS the compiled kernels call."""
    run, flops = bench.make_sgemm()
    M, K, N = bench.sgemm_dims()
    benchmark.group = "sgemm"
    benchmark.extra_info.update(m=M, k=K, n=N, flops=flops)
    benchmark.pedantic(run, rounds=20, warmup_rounds=2)
    record("sgemm", "sgemm", benchmark)


@pytest.mark.parametrize("shape_name, impl", CASES)
def test_training_step(benchmark, record, request, cell, shape_name, impl):
    if impl == "torch":
        request.getfixturevalue("torch_threads")  # skips when torch is not installed
    reason = bench.implementation_status(impl)
    if reason:
        pytest.skip(reason)
    shape = bench.SHAPES[shape_name]
    step = bench.make_step(impl, shape, cell)
    benchmark.group = shape_name
    benchmark.extra_info.update(shape=str(shape), cell=cell, flops=bench.step_flops(shape, cell))
    benchmark.pedantic(step, rounds=shape.rounds, warmup_rounds=shape.warmup)
    record(shape_name, impl, benchmark)
