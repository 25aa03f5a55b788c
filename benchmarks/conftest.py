"""Fixtures of the benchmarks, and a closing table of ratios and rates.

pytest-benchmark prints each group's implementations side by side; the tables printed after
it add what pytest-benchmark cannot: each implementation's time over the compiled kernels',
its GFLOP/s, and that rate as a fraction of the sgemm reference's.
"""
import time

import pytest

from fastbptt import bench

# Computed before torch is imported, so that it counts only numpy's and scipy's pools.
THREADS = bench.blas_threads()

# {group: (shape name, cell, {implementation: Timing})}, filled by the ``record`` fixture.
_RESULTS = {}


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
    """record(benchmark, impl, shape_name=None, cell=None) keeps the median and quartiles
    under the benchmark's group, for the summary (shape_name None: the sgemm reference)."""
    def record(benchmark, impl, shape_name=None, cell=None):
        metadata = getattr(benchmark, "stats", None)
        stats = getattr(metadata, "stats", None)
        if stats is not None and stats.rounds:  # None under --benchmark-disable
            entry = _RESULTS.setdefault(benchmark.group, (shape_name, cell, {}))
            entry[2][impl] = bench.Timing(stats.median, stats.q1, stats.q3, stats.rounds)
    return record


@pytest.fixture
def run_step(benchmark, record, request):
    """run_step(group, impl, shape_name, cell): time one training step of bench.make_step."""
    def run_step(group, impl, shape_name, cell):
        if impl.startswith("torch"):
            request.getfixturevalue("torch_threads")  # skips when torch is not installed
        reason = bench.implementation_status(impl)
        if reason:
            pytest.skip(reason)
        shape = bench.SHAPES[shape_name]
        step = bench.make_step(impl, shape, cell)
        benchmark.group = group
        benchmark.extra_info.update(shape=str(shape), cell=cell, flops=bench.step_flops(shape, cell))
        benchmark.pedantic(step, rounds=shape.rounds, warmup_rounds=shape.warmup)
        record(benchmark, impl, shape_name, cell)
    return run_step


@pytest.hookimpl(trylast=True)
def pytest_terminal_summary(terminalreporter):
    groups = {g: v for g, v in _RESULTS.items() if v[0] is not None}
    if not groups:
        return
    write = terminalreporter.write_line
    terminalreporter.section("training step: ratios to the compiled kernels, rates")
    sgemm_rate = None
    if "sgemm" in _RESULTS:
        M, K, N = bench.sgemm_dims()
        sgemm_rate = 2 * M * K * N / _RESULTS["sgemm"][2]["sgemm"].median
        write(f"sgemm reference ({M}, {K}) @ ({K}, {N}): {sgemm_rate / 1e9:.1f} GFLOP/s")
    write(f"threads: {THREADS} per BLAS pool, torch.set_num_threads({THREADS})")
    for group, (shape_name, cell, timings) in groups.items():
        write("")
        table = bench.format_shape_table(group, bench.SHAPES[shape_name], cell,
                                         timings, sgemm_rate)
        for line in table.splitlines():
            write(line)
