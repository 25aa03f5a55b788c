"""Fixtures of the benchmarks, and a closing table of ratios and rates.

pytest-benchmark prints each group's implementations side by side; the tables printed after
it add what pytest-benchmark cannot: each implementation's time over the compiled kernels',
its GFLOP/s, and that rate as a fraction of the sgemm reference's.

The peers (``bench.is_peer``: torch, onnxruntime) run in processes of their own, one for each
of their benchmarks (``bench.PeerProcess``, as ``python -m fastbptt bench`` runs them), at
fastbptt's thread count: none of their thread pools, allocators or library state is in this
process, nor this process's in theirs. A peer builds its step once, then times its warm-up
and rounds itself in one go (back to back, the garbage collector paused, as
``bench.time_calls`` does); pytest-benchmark takes those seconds as the benchmark's rounds
through its timer (``PeerClock``), so that its table, its JSON and the tables below show the
peer's own times, with no round trip between the processes in them.
"""
import time

import pytest

from fastbptt import bench

# The thread count of numpy's and scipy's BLAS pools, the one the peers are given too (torch
# and onnxruntime are never imported in this process: they would not count).
THREADS = bench.blas_threads()

# {group: (shape name, cell, {implementation: Timing})}, filled by the ``record`` fixture.
_RESULTS = {}


class PeerClock:
    """The timer of a peer's benchmark, in place of pytest-benchmark's clock (``time_peer``).

    pytest-benchmark's pedantic mode reads its timer just before and just after each round's
    call, and only then: it neither calibrates rounds nor measures the timer's precision.
    Each round calls :meth:`next_round`, which sets this clock to the seconds the peer timed
    for that round; the clock reads 0 before the call, those seconds after it, and 0 again
    once read, so that each round's end - start is the peer's time exactly.
    """

    def __init__(self, impl):
        self.impl = impl
        self.rounds = None  # the peer's seconds, an iterator, once ``time_peer`` has them
        self._reading = 0.0

    def next_round(self):
        self._reading = next(self.rounds)

    def __call__(self):
        if self.rounds is None:
            raise RuntimeError(f"the {self.impl} benchmark must be timed in its own process "
                               "(time_peer), not in pytest's")
        reading, self._reading = self._reading, 0.0
        return reading

    def __repr__(self):  # the timer pytest-benchmark's JSON names
        return f"time.perf_counter in the {self.impl} process"


def pytest_collection_modifyitems(items):
    """A benchmark whose ``impl`` parameter names a peer gets a PeerClock as its timer:
    pytest-benchmark takes the timer from the ``benchmark`` mark when it builds the fixture,
    before the test runs."""
    for item in items:
        callspec = getattr(item, "callspec", None)
        impl = callspec.params.get("impl") if callspec else None
        if isinstance(impl, str) and bench.is_peer(impl):
            item.add_marker(pytest.mark.benchmark(timer=PeerClock(impl)))


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
def time_peer(benchmark, request):
    """time_peer(impl, shape_name, cell, threads, task="step"): time the peer ``impl`` in a
    bench.PeerProcess of its own, with the shape's warm-up and rounds (one call under
    --benchmark-disable, as pedantic mode makes then), as this benchmark's rounds."""
    def time_peer(impl, shape_name, cell, threads, task="step"):
        marker = request.node.get_closest_marker("benchmark")
        clock = marker.kwargs.get("timer") if marker else None
        if not (isinstance(clock, PeerClock) and clock.impl == impl):
            raise RuntimeError(f"time_peer({impl!r}): the test's impl parameter must name this "
                               "peer, for its benchmark to be timed on the peer's clock")
        shape = bench.SHAPES[shape_name]
        rounds, warmup = (shape.rounds, shape.warmup) if benchmark.enabled else (1, 0)
        # No pause in the peer: the ``settle`` fixture's came before, and this process has
        # waited since, while the peer started.
        with bench.PeerProcess(impl, shape_name, cell, threads, task=task) as peer:
            clock.rounds = iter(peer.time_calls(rounds, warmup, settle=0))
        benchmark.pedantic(clock.next_round, rounds=rounds)
    return time_peer


@pytest.fixture
def run_step(benchmark, record, time_peer):
    """run_step(group, impl, shape_name, cell): time one training step of bench.make_step, a
    peer's in a process of its own (``time_peer``)."""
    def run_step(group, impl, shape_name, cell):
        reason = bench.implementation_status(impl)
        if reason:
            pytest.skip(reason)
        shape = bench.SHAPES[shape_name]
        benchmark.group = group
        benchmark.extra_info.update(shape=str(shape), cell=cell, flops=bench.step_flops(shape, cell))
        if bench.is_peer(impl):
            time_peer(impl, shape_name, cell, THREADS)
        else:
            benchmark.pedantic(bench.make_step(impl, shape, cell), rounds=shape.rounds,
                               warmup_rounds=shape.warmup)
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
    write(f"threads: {THREADS} per BLAS pool, torch.set_num_threads({THREADS}) in processes "
          "of its own")
    for group, (shape_name, cell, timings) in groups.items():
        write("")
        table = bench.format_shape_table(group, bench.SHAPES[shape_name], cell,
                                         timings, sgemm_rate)
        for line in table.splitlines():
            write(line)
