"""Models trained in parallel threads give bit-identical results to the same runs in sequence.

The compiled kernels release the GIL for their whole time loop, so two threads really run at
once there; nothing they share (BLAS, module state) may leak from one run into the other.
"""
import threading

import numpy as np
import pytest

import fastbptt as fb

STEPS = 4


def _task(seed, dtype):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((40, 8, 5)).astype(dtype)
    y = rng.standard_normal((40, 8, 3)).astype(dtype)
    return x, y


def train(backend, dtype, hidden, seed, start=None):
    """A few steps of SGD with per-step clipping; returns the parameters and the losses."""
    model = fb.RNN(5, hidden, num_layers=2, output_size=3, dtype=dtype.name, seed=seed, backend=backend)
    x, y = _task(seed, dtype)
    if start is not None:
        start.wait()
    losses = []
    for _ in range(STEPS):
        out, _ = model.forward(x)
        loss, d_out = fb.losses.mse(out, y)
        g = model.backward(d_out, clip_step=1.0)
        fb.clip_grad_norm(g.params, 5.0)
        for name, value in model.params.items():
            value -= 0.05 * g.params[name]
        losses.append(loss)
    return model.state_dict(), losses


# H = 48 and H = 80: B·H·H below and above the kernels' small-product threshold (which path
# each takes is checked in test_paths.py; here only that threads do not mix).
@pytest.mark.parametrize("hidden", [48, 80])
@pytest.mark.parametrize("n_threads", [2, 4])
def test_parallel_training_equals_sequential(backend, dtype, n_threads, hidden):
    seeds = list(range(10, 10 + n_threads))
    sequential = [train(backend, dtype, hidden, s) for s in seeds]
    results, errors = [None] * n_threads, []
    start = threading.Barrier(n_threads)

    def worker(i):
        try:
            results[i] = train(backend, dtype, hidden, seeds[i], start)
        except BaseException as exc:  # noqa: BLE001 -- reported below, in the main thread
            errors.append(exc)
            start.abort()

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(n_threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads), "a training thread hung"
    assert not errors, errors
    for (params, losses), (want_params, want_losses) in zip(results, sequential):
        assert losses == want_losses
        assert losses[-1] < losses[0]  # it did train
        for name in want_params:
            np.testing.assert_array_equal(params[name], want_params[name], err_msg=name)
    # the runs differ from each other, so a mix-up between threads would show
    assert not np.array_equal(results[0][0]["weight_hh_l0"], results[1][0]["weight_hh_l0"])


_ONE_STEP = """
import hashlib, sys
import numpy as np
import fastbptt as fb
from fastbptt import _backend
cell = sys.argv[1]
rng = np.random.default_rng(3)
x = rng.standard_normal((20, 24, 40)).astype(np.float32)
lengths = rng.integers(1, 21, size=24)
model = fb.RNN(40, 64, cell=cell, num_layers=2, output_size=5, seed=1, backend="cython")
digest = hashlib.sha256()
for lens in (None, lengths):
    out, h_n = model.forward(x, lengths=lens)
    g = model.backward(np.ones_like(out), clip_step=3.0)
    for a in [out, g.x] + [g.params[k] for k in sorted(g.params)]:
        digest.update(np.ascontiguousarray(a).tobytes())
print(_backend._compiled.threads(), digest.hexdigest())
"""


def _built_with_openmp(kernels):
    """Whether a compiled build runs on an OpenMP team: a ``FASTBPTT_OPENMP=0`` build
    (setup.py) calls no OpenMP function, so their names are absent from its binary."""
    with open(kernels.__file__, "rb") as f:
        return b"omp_get_max_threads" in f.read()


@pytest.mark.parametrize("cell", ["tanh", "lstm", "gru"])
def test_results_do_not_depend_on_the_thread_count(compiled_kernels, cell, tmp_path):
    """One OpenMP thread or several, the float32 step gives the same bits (README: every
    product sums each element in the same order however its work is split; B = 24 runs the
    time loops in shards on two threads and whole on one). The team is sized when OpenMP
    starts, so each count runs in a fresh process, importing this very fastbptt. A build
    without OpenMP (FASTBPTT_OPENMP=0) promises one thread whatever OMP_NUM_THREADS asks
    for, and the same bits."""
    import os
    import subprocess
    import sys

    openmp = _built_with_openmp(compiled_kernels)
    package_parent = os.path.dirname(os.path.dirname(os.path.abspath(fb.__file__)))
    results = {}
    for threads in (1, 2):
        env = dict(os.environ, OMP_NUM_THREADS=str(threads),
                   PYTHONPATH=os.pathsep.join([package_parent, os.environ.get("PYTHONPATH", "")]))
        run = subprocess.run([sys.executable, "-c", _ONE_STEP, cell], env=env, capture_output=True,
                             text=True, cwd=tmp_path)
        assert run.returncode == 0, run.stderr
        team, digest = run.stdout.split()
        assert int(team) == (threads if openmp else 1)
        results[threads] = digest
    assert results[1] == results[2]


def test_openmp_detection_sees_this_builds_team(compiled_kernels):
    """The premise of the test above: a build whose team has more than one thread is an
    OpenMP build."""
    if compiled_kernels.threads() > 1:
        assert _built_with_openmp(compiled_kernels)


def test_set_num_threads_round_trips(restore_threads):
    fb.set_num_threads(1)
    assert fb.get_num_threads() == 1
    fb.set_num_threads(3)
    assert fb.get_num_threads() == 3


@pytest.mark.parametrize("bad, error", [(0, ValueError), (-2, ValueError), (1.5, TypeError),
                                        ("2", TypeError), (True, TypeError), (None, TypeError)])
def test_set_num_threads_refuses_bad_counts(restore_threads, bad, error):
    before = fb.get_num_threads()
    with pytest.raises(error, match="n must"):
        fb.set_num_threads(bad)
    assert fb.get_num_threads() == before


def test_the_kernels_team_follows_set_num_threads(compiled_kernels, restore_threads):
    """The kernels plan their OpenMP team from the setting: a float32 batch of 64 with few
    weights runs in one shard per thread, or whole on one thread."""
    fb.set_num_threads(1)
    assert compiled_kernels.threads() == 1
    assert compiled_kernels._shard_bounds(64, 16 * 16) is None
    fb.set_num_threads(2)
    assert compiled_kernels.threads() == 2
    assert len(compiled_kernels._shard_bounds(64, 16 * 16)) == 3


@pytest.mark.parametrize("cell", ["tanh", "lstm", "gru"])
@pytest.mark.parametrize("B, hidden", [(1, 100), (24, 16), (4, 160)],
                         ids=["single-dot", "sharded", "packed"])
def test_results_are_the_same_bits_on_any_thread_count(backend, cell, B, hidden, restore_threads):
    """A float32 forward and backward through a readout give the same bits on 1, 2 and 3
    threads, on each per-step path (a single sequence's plain loops, a batch in shards,
    the own gemm's panels)."""
    rng = np.random.default_rng(5)
    x = rng.standard_normal((7, B, 5)).astype(np.float32)
    d = rng.standard_normal((7, B, 3)).astype(np.float32)
    runs = []
    for n in (1, 2, 3):
        fb.set_num_threads(n)
        model = fb.RNN(5, hidden, cell=cell, output_size=3, dtype="float32", seed=1, backend=backend)
        out, h_n = model.forward(x)
        g = model.backward(d)
        runs.append([out, h_n] + [g.params[k] for k in sorted(g.params)])
    assert any(np.any(a != 0) for a in runs[0])
    for other in runs[1:]:
        for a, b in zip(runs[0], other):
            np.testing.assert_array_equal(a, b)


# --------------------------------------------------------------------------- the team's size
# Each kind of float32 call runs on the whole team or on one thread, whichever its timings
# favour (``_team.pxi``). The policy is tested on simulated timings (``_team_replay``), which
# are exact; the real clock only in what it must never change: the results and the caller's
# setting.

CALLS = 4000


def explorations(sizes, choice):
    """The indices of the calls that did not run on ``choice``, after the first four."""
    return [i for i, s in enumerate(sizes) if i >= 4 and s != choice]


def test_quiet_machine_runs_nearly_every_call_on_the_whole_team(compiled_kernels):
    """Team calls 1.8x faster than one thread's (a quiet machine): after the first four calls
    (two of each size), all but the explorations run on the team, the explorations grow
    sparser, and they cost under 1 % of the time."""
    sizes = compiled_kernels._team_replay([1.0] * CALLS, [1.8] * CALLS)
    assert sizes[:4] == [0, 0, 1, 1]
    tries = explorations(sizes, 0)
    assert len(tries) <= 20
    gaps = np.diff(tries)
    assert np.all(gaps[1:] >= gaps[:-1]) and gaps[-1] >= 200
    assert len(tries) * 0.8 / CALLS < 0.01


def test_busy_machine_runs_nearly_every_call_on_one_thread(compiled_kernels):
    """Team calls 30x slower than one thread's (a peer descheduled at every meeting): after
    the first calls, one thread; the team's explorations cost at most 2 % of the time."""
    sizes = compiled_kernels._team_replay([30.0] * CALLS, [1.0] * CALLS)
    assert len(explorations(sizes, 1)) <= 4
    spent = sum(30.0 if s == 0 else 1.0 for s in sizes[4:])
    assert spent <= 1.02 * (CALLS - 4) + 30.0


def test_the_choice_follows_the_machine_from_quiet_to_busy_and_back(compiled_kernels):
    """Quiet, then busy from call 1000, then quiet from call 2000: one thread from the call
    after the first busy one (which shows the change) on, the team again within the exploration interval that the busy phase set
    (the team's loss there over the budget, here 15.7 / 0.02 calls) and a confirming call."""
    team = [1.0] * 1000 + [30.0] * 1000 + [1.0] * 2000
    sizes = compiled_kernels._team_replay(team, [1.8] * 4000)
    assert sizes[1000] == 0 and all(s == 1 for s in sizes[1001:1009])
    back = next(i for i in range(2000, 4000) if sizes[i] == 0 and sizes[i + 1] == 0
                and sizes[i + 2] == 0)
    assert back <= 2000 + int(29.0 / 1.8 / 0.02) + 2
    assert sum(sizes[back:]) <= 12


def test_one_lucky_exploration_does_not_move_the_choice(compiled_kernels):
    """Busy: an exploration that happens to find the team fast once is not followed by a
    switch unless the next call confirms it."""
    team = [30.0] * CALLS
    one = [1.0] * CALLS
    first = explorations(compiled_kernels._team_replay(team, one), 1)[0]
    team[first] = 0.5                       # lucky once
    sizes = compiled_kernels._team_replay(team, one)
    assert sizes[first] == 0 and sizes[first + 1] == 0      # the confirming try
    assert all(s == 1 for s in sizes[first + 2:first + 50])


def test_choosing_the_size_leaves_results_and_the_setting_unchanged(compiled_kernels,
                                                                     restore_threads):
    """With the choice on, the calls that run on one thread (the first calls of each kind
    include two) give the same bits as with it off, the caller's team size reads the same
    throughout, and no cap outlives a call, also one that raises inside the kernel."""
    fb.set_num_threads(2)
    rng = np.random.default_rng(2)
    x = rng.standard_normal((30, 32, 6)).astype(np.float32)
    runs = {}
    for adaptive in (False, True):
        compiled_kernels._adaptive_threads(adaptive)
        try:
            model = fb.RNN(6, 64, cell="lstm", output_size=2, dtype="float32", seed=4)
            steps = []
            for _ in range(6):
                out, _ = model.forward(x)
                g = model.backward(np.cos(out))
                steps.append((out, g.flat.copy()))
                assert fb.get_num_threads() == 2
            runs[adaptive] = steps
        finally:
            compiled_kernels._adaptive_threads(True)
    for (a, ga), (b, gb) in zip(runs[False], runs[True]):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(ga, gb)
    w = rng.standard_normal((8, 6)).astype(np.float32)
    for _ in range(3):                      # the third call of its kind runs on one thread
        compiled_kernels.linear_forward(x[0], w, np.zeros(8, np.float32))
    with pytest.raises(ValueError):
        compiled_kernels.linear_forward(x[0], w, np.zeros(8, np.float64))
    assert len(compiled_kernels._shard_bounds(64, 16 * 16)) == 3   # the team, uncapped


def test_adaptive_threads_can_be_switched_off_from_the_environment(compiled_kernels, tmp_path):
    """FASTBPTT_ADAPTIVE_THREADS=0 keeps every call on the whole team: nothing is measured."""
    import os
    import subprocess
    import sys

    package_parent = os.path.dirname(os.path.dirname(os.path.abspath(fb.__file__)))
    code = ("import numpy as np, fastbptt as fb\n"
            "from fastbptt import _backend\n"
            "m = fb.RNN(3, 8, dtype='float32')\n"
            "for _ in range(5): m.forward(np.zeros((4, 2, 3), np.float32))\n"
            "print(len(_backend._compiled._team_choices()))\n")
    for value, seen in (("0", "0"), ("1", None)):
        env = dict(os.environ, FASTBPTT_ADAPTIVE_THREADS=value, OMP_NUM_THREADS="2",
                   PYTHONPATH=os.pathsep.join([package_parent, os.environ.get("PYTHONPATH", "")]))
        run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                             text=True, cwd=tmp_path)
        assert run.returncode == 0, run.stderr
        if seen is not None:
            assert run.stdout.strip() == seen
        elif _built_with_openmp(compiled_kernels):
            assert int(run.stdout) >= 1
