"""Fixtures of the benchmarks, and a closing table of ratios and rates.

pytest-benchmark prints each shape's implementations side by side; the table printed after
it adds what pytest-benchmark cannot: each implementation's time over the compiled kernels',
its GFLOP/s, and that rate as a fraction of the sgemm reference's.
"""
import time

import pytest

from fastbptt import bench

CELL = "tanh"

# Computed before torch is imported, so that it counts only numpy's and scipy's pools.
THREADS = bench.blas_threads()

# {(group, implementation): Timing}, filled by the ``record`` fixture.
_RESULTS = {}


@pytest.fixture(scope="session")
def cell():
    """The recurrent cell every training-step benchmark runs."""
    return CELL


@pytest.fixture(scope="session")
def torch_threads():
    """torch, with as many threads as the BLAS pools the fastbptt backends run on."""
    torch = pytest.importorskip("torch")
    before = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    yield torch
    torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def settle():
    """A pause before each benchmark, for the previous one's spinning BLAS/OpenMP threads
    to go to sleep instead of competing for the cores with this one."""
    time.sleep(bench.SETTLE_SECONDS)


@pytest.fixture
def record():
    """record(group, implementation, benchmark) keeps the median and quartiles for the summary."""
    def record(group, impl, benchmark):
        metadata = getattr(benchmark, "stats", None)
        stats = getattr(metadata, "stats", None)
        if stats is not None and stats.rounds:  # None under --benchmark-disable
            _RESULTS[group, impl] = bench.Timing(stats.median, stats.q1, stats.q3, stats.rounds)
    return record


@pytest.hookimpl(trylast=True)
def pytest_terminal_summary(terminalreporter):
    if not any(group in bench.SHAPES for group, _ in _RESULTS):
        return
    write = terminalreporter.write_line
    terminalreporter.section("training step: ratios to the compiled kernels, rates")
    sgemm_rate = None
    if ("sgemm", "sgemm") in _RESULTS:
        M, K, N = bench.sgemm_dims()
        sgemm_rate = 2 * M * K * N / _RESULTS["sgemm", "sgemm"].median
        write(f"sgemm reference ({M}, {K}) @ ({K}, {N}): {sgemm_rate / 1e9:.1f} GFLOP/s")
    write(f"threads: {THREADS} per BLAS pool, torch.set_num_threads({THREADS})")
    for name, shape in bench.SHAPES.items():
        timings = {impl: _RESULTS[name, impl] for impl in bench.IMPLEMENTATIONS
                   if (name, impl) in _RESULTS}
        if timings:
            write("")
            for line in bench.format_shape_table(name, shape, CELL, timings, sgemm_rate).splitlines():
                write(line)
