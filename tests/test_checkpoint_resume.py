"""fit(checkpoint=, checkpoint_every=): runs killed at random moments resume bit-identical; the
checkpoint file is always loadable, and a damaged, truncated or foreign one is refused;
on_nonfinite="skip" drops exactly the non-finite updates."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import fastbptt as fb
from fastbptt.checkpoint import save_checkpoint
from fastbptt.train import fit, load_checkpoint

SRC = str(Path(fb.__file__).resolve().parent.parent)

# A training run in a child process: a small LSTM (its carried state is an (h, c) pair),
# carry_state and BPTT(3, 5) windows, Adam and clipping; the parameters and the history go to
# files at the end. The loss sleeps a little so that a run lasts long enough to be killed
# several times (the sleep changes no number).
CHILD = r"""
import json, sys, time
import numpy as np
import fastbptt as fb
from fastbptt.train import fit

checkpoint, out = sys.argv[1], sys.argv[2]
checkpoint = None if checkpoint == "-" else checkpoint

def stream():
    rng = np.random.default_rng(7)
    while True:
        yield rng.standard_normal((8, 2, 3)), rng.standard_normal((8, 2, 2))

def slow_mse(out, target, last_step=False):
    time.sleep(0.004)
    return fb.losses.mse(out, target, last_step=last_step)

model = fb.RNN(3, 6, cell="lstm", output_size=2, dtype="float64", seed=5)
opt = fb.optim.Adam(model.params, lr=1e-2)
print("ready", flush=True)
history = fit(model, stream(), steps=STEPS, optimizer=opt, loss=slow_mse, bptt=(3, 5),
              carry_state=True, clip_norm=1.0, progress=False, checkpoint=checkpoint,
              checkpoint_every=None if checkpoint is None else 1)
np.savez(out, **model.params)
with open(out + ".json", "w") as f:
    json.dump({"step": history.step, "loss": history.loss, "grad_norm": history.grad_norm,
               "updates": history.updates, "batches": history.batches}, f)
"""
STEPS = 60
KILLS = 4
CHILD_TIMEOUT = 120  # seconds; a child never outlives it


def _child(tmp_path, checkpoint, out):
    script = tmp_path / "child.py"
    if not script.exists():
        script.write_text(CHILD.replace("STEPS", str(STEPS)))
    env = dict(os.environ, PYTHONPATH=SRC + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.Popen([sys.executable, str(script), checkpoint, str(out)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finish(proc):
    try:
        stdout, stderr = proc.communicate(timeout=CHILD_TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        pytest.fail(f"the training child did not end within {CHILD_TIMEOUT} s")
    assert proc.returncode == 0, f"the training child failed:\n{stderr}"
    return stdout


def _wait_ready(proc):
    """Block until the child has imported everything and is about to call fit."""
    line = proc.stdout.readline()
    if line.strip() != "ready":
        proc.kill()
        _, stderr = proc.communicate(timeout=CHILD_TIMEOUT)
        pytest.fail(f"the training child did not start: {line!r}\n{stderr}")


def test_sigkilled_runs_resume_bit_identical_to_an_uninterrupted_run(tmp_path):
    reference = tmp_path / "reference.npz"
    _finish(_child(tmp_path, "-", reference))

    checkpoint = tmp_path / "run.ckpt"
    resumed = tmp_path / "resumed.npz"
    rng = np.random.default_rng(2024)
    kills, steps_seen, stalled = 0, [], 0
    deadline = time.monotonic() + 4 * CHILD_TIMEOUT
    # At least KILLS kills, and the checkpoint moving forward between two of them (a kill
    # into a resumed run, not only into the first): on a slow machine the moments stretch.
    while kills < KILLS or len(set(steps_seen)) < 2:
        assert time.monotonic() < deadline, "the kill loop made no progress"
        proc = _child(tmp_path, str(checkpoint), resumed)
        try:
            _wait_ready(proc)
            # Some kills land before the first checkpoint of a run, some in the middle of a
            # write (one each batch): every moment of the loop is a candidate.
            time.sleep(rng.uniform(0.02, 0.15) * (1 + stalled))
            proc.send_signal(signal.SIGKILL)
            _, stderr = proc.communicate(timeout=CHILD_TIMEOUT)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
        if proc.returncode == -signal.SIGKILL:
            kills += 1
        elif proc.returncode == 0:
            pytest.fail(f"the run ended after {kills} kills: make it longer (STEPS) to be killed {KILLS} times")
        else:
            pytest.fail(f"the training child failed (exit {proc.returncode}):\n{stderr}")
        if checkpoint.exists():
            step = load_checkpoint(checkpoint).step  # loadable after every kill
            assert 0 < step < STEPS
            assert not steps_seen or step >= steps_seen[-1], "a resumed run went back"
            stalled = stalled + 1 if steps_seen and step == steps_seen[-1] else 0
            steps_seen.append(step)
        else:
            stalled += 1

    _finish(_child(tmp_path, str(checkpoint), resumed))
    with np.load(reference) as ref, np.load(resumed) as res:
        assert sorted(ref.files) == sorted(res.files)
        for name in ref.files:
            np.testing.assert_array_equal(res[name], ref[name], err_msg=name)
    assert json.loads(Path(f"{resumed}.json").read_text()) == json.loads(Path(f"{reference}.json").read_text())
    assert load_checkpoint(checkpoint).step == STEPS
    # a writer killed mid-file leaves at most its one fixed temporary name
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] in ([], [".run.ckpt.tmp"])


# --------------------------------------------------------------------------- in-process resumes


class Interrupted(Exception):
    """Raised by the stream: the run stops there as a killed one would, between two batches."""


def _stream(stop_at=None, *, nan_at=(), big_target_at=(), T=6, B=3):
    rng = np.random.default_rng(0)
    i = 0
    while True:
        if i == stop_at:
            raise Interrupted
        x, y = rng.standard_normal((T, B, 2)), rng.standard_normal((T, B, 1))
        if i in nan_at:
            x[1, 0, 0] = np.nan
        if i in big_target_at:
            y[:] = 1e200  # finite, but its squared error overflows: a non-finite loss
        i += 1
        yield x, y


def _model(backend, cell="tanh"):
    return fb.RNN(2, 5, cell=cell, output_size=1, dtype="float64", seed=1, backend=backend)


def _train(backend, checkpoint=None, *, stream=None, steps=20, cell="tanh", every=3, **kw):
    model = _model(backend, cell)
    opt = fb.optim.Adam(model.params, lr=1e-2)
    history = fit(model, _stream() if stream is None else stream, steps=steps, optimizer=opt,
                  progress=False, checkpoint=checkpoint,
                  checkpoint_every=every if checkpoint is not None else None, **kw)
    return model, history


def _assert_same_run(a, b):
    (ma, ha), (mb, hb) = a, b
    for name in ma.params:
        np.testing.assert_array_equal(ma.params[name], mb.params[name], err_msg=name)
    for field in ("step", "loss", "grad_norm", "eval_step", "eval_loss", "batches", "updates",
                  "skipped", "skipped_step"):
        assert getattr(ha, field) == getattr(hb, field), field


@pytest.mark.parametrize("cell", ["tanh", "lstm", "gru"])
@pytest.mark.parametrize("setup", [dict(), dict(carry_state=True, bptt=(2, 4), clip_norm=1.0)],
                         ids=["full", "carried-bptt"])
def test_interrupted_runs_resume_bit_identical(backend, cell, setup, tmp_path):
    reference = _train(backend, cell=cell, **setup)
    path = tmp_path / "ck.npz"
    for stop in (2, 7, 8, 16):  # 2: before the first checkpoint; 7, 8: one apart
        with pytest.raises(Interrupted):
            _train(backend, path, stream=_stream(stop), cell=cell, **setup)
    _assert_same_run(_train(backend, path, cell=cell, **setup), reference)


def test_a_finished_run_called_again_returns_its_history_and_parameters(backend, tmp_path):
    path = tmp_path / "ck.npz"
    first = _train(backend, path, eval_data=next(_stream()), eval_every=5)
    again = _train(backend, path, stream=iter(()), eval_data=next(_stream()), eval_every=5)
    _assert_same_run(again, first)


def test_a_finished_run_asked_for_more_steps_goes_on(backend, tmp_path):
    path = tmp_path / "ck.npz"
    _train(backend, path, steps=8)
    _assert_same_run(_train(backend, path, steps=20), _train(backend, steps=20))


def test_load_checkpoint_gives_model_optimizer_state_step_and_history(backend, tmp_path):
    path = tmp_path / "ck.npz"
    with pytest.raises(Interrupted):
        _train(backend, path, stream=_stream(10), carry_state=True)
    ck = load_checkpoint(path, backend=backend)
    assert ck.step == 9 and ck.history.batches == 9 and len(ck.history.loss) == 9
    assert ck.optimizer == "Adam" and ck.state is not None and ck.state.shape == (1, 3, 5)
    assert ck.model.config == _model(backend).config and ck.model.backend == backend
    opt = fb.optim.Adam(_model(backend).params, lr=1e-2)
    opt.load_state_dict(ck.optimizer_state)
    assert opt.step_count == 9


def test_resuming_with_another_model_or_setting_is_refused(backend, tmp_path):
    path = tmp_path / "ck.npz"
    with pytest.raises(Interrupted):
        _train(backend, path, stream=_stream(5))
    with pytest.raises(ValueError, match="another model"):
        _train(backend, path, cell="gru")
    with pytest.raises(ValueError, match="clip_norm"):
        _train(backend, path, clip_norm=1.0)
    with pytest.raises(ValueError, match="SGD"):
        model = _model(backend)
        fit(model, _stream(), steps=20, optimizer=fb.optim.SGD(model.params, lr=0.1),
            progress=False, checkpoint=path, checkpoint_every=3)
    with pytest.raises(ValueError, match="steps=2"):
        _train(backend, path, steps=2)
    with pytest.raises(ValueError, match="ran out"):
        _train(backend, path, stream=iter([next(_stream())]))


def test_bad_checkpoint_arguments_are_refused(tmp_path):
    model = _model("numpy")
    opt = fb.optim.Adam(model.params)
    cases = [
        (dict(checkpoint_every=3), ValueError, "checkpoint_every needs checkpoint"),
        (dict(checkpoint=tmp_path / "ck.npz", checkpoint_every=0), ValueError, "checkpoint_every"),
        (dict(checkpoint=tmp_path / "no" / "ck.npz"), ValueError, "folder"),
        (dict(checkpoint=tmp_path), ValueError, "is a folder"),
        (dict(checkpoint=3.5), TypeError, "checkpoint must be a path"),
        (dict(on_nonfinite="ignore"), ValueError, "on_nonfinite"),
        (dict(max_nonfinite=0), ValueError, "max_nonfinite"),
    ]
    before = {k: v.copy() for k, v in model.params.items()}
    for kw, error, match in cases:
        with pytest.raises(error, match=match):
            fit(model, _stream(), steps=3, optimizer=opt, progress=False, **kw)
    with pytest.raises(TypeError, match="state_dict"):
        fit(model, _stream(), steps=3, optimizer=object(), progress=False, checkpoint=tmp_path / "c.npz")
    for name, value in before.items():
        np.testing.assert_array_equal(model.params[name], value)


# --------------------------------------------------------------------------- damaged files


@pytest.fixture
def saved(tmp_path):
    path = tmp_path / "ck.npz"
    with pytest.raises(Interrupted):
        _train("numpy", path, stream=_stream(7), carry_state=True)
    return path


def test_a_truncated_checkpoint_is_refused(saved):
    data = saved.read_bytes()
    for size in (0, 10, len(data) // 3, len(data) // 2, len(data) - 1):
        saved.write_bytes(data[:size])
        with pytest.raises(ValueError, match="checkpoint"):
            load_checkpoint(saved)


def test_a_damaged_checkpoint_is_refused_or_reads_the_same(saved):
    # Bytes all over the file flipped in turn: either the file is refused, or the byte was
    # one that carries no content (zip padding) and everything reads back as written.
    data = saved.read_bytes()
    original = load_checkpoint(saved)
    refused = 0
    positions = range(0, len(data), max(1, len(data) // 200))
    for pos in positions:
        damaged = bytearray(data)
        damaged[pos] ^= 0x5A
        saved.write_bytes(bytes(damaged))
        try:
            ck = load_checkpoint(saved)
        except ValueError as exc:
            assert "checkpoint" in str(exc)
            refused += 1
            continue
        assert ck.step == original.step and ck.optimizer_state.keys() == original.optimizer_state.keys()
        for name in original.model.params:
            np.testing.assert_array_equal(ck.model.params[name], original.model.params[name])
        for key, value in original.optimizer_state.items():
            np.testing.assert_array_equal(ck.optimizer_state[key], value)
        np.testing.assert_array_equal(ck.state, original.state)
    assert refused > len(positions) // 2


def test_a_rewritten_array_with_the_old_checksum_is_refused(saved):
    with np.load(saved) as data:
        files = {name: data[name] for name in data.files}
    files["param/weight_hh_l0"] = files["param/weight_hh_l0"] + 1e-12
    with open(saved, "wb") as f:
        np.savez(f, **files)
    with pytest.raises(ValueError, match="checksum"):
        load_checkpoint(saved)


def test_foreign_files_are_refused(tmp_path):
    model_file = tmp_path / "model.npz"
    _model("numpy").save(model_file)
    with pytest.raises(ValueError, match="not a fastbptt checkpoint.*fb.load"):
        load_checkpoint(model_file)
    other = tmp_path / "other.npz"
    np.savez(other, a=np.arange(3))
    with pytest.raises(ValueError, match="not a fastbptt checkpoint"):
        load_checkpoint(other)
    npy = tmp_path / "one.npy"
    np.save(npy, np.arange(3))
    with pytest.raises(ValueError, match="checkpoint"):
        load_checkpoint(npy)
    text = tmp_path / "notes.txt"
    text.write_text("not a checkpoint\n")
    with pytest.raises(ValueError, match="checkpoint"):
        load_checkpoint(text)
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path / "missing.npz")
    # fit refuses to resume from a foreign file instead of overwriting it
    with pytest.raises(ValueError, match="not a fastbptt checkpoint"):
        _train("numpy", model_file)


def test_a_write_leaves_no_temporary_file_and_replaces_the_old_checkpoint(tmp_path):
    path = tmp_path / "ck.npz"
    model = _model("numpy")
    opt = fb.optim.Adam(model.params)
    for step in (1, 2):
        save_checkpoint(path, model=model, optimizer=opt, step=step, history=fb.train.History())
        assert load_checkpoint(path).step == step
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck.npz"]


# --------------------------------------------------------------------------- non-finite batches


def _without(indices, n=40):
    """The stream _stream() would give, with the batches at ``indices`` left out."""
    return (b for i, b in zip(range(n), _stream()) if i not in indices)


@pytest.mark.parametrize("carry_state", [False, True])
def test_skip_drops_exactly_the_nonfinite_updates(backend, carry_state):
    bad = {3, 9}
    skipped = _train(backend, stream=_stream(nan_at={3}, big_target_at={9}), steps=14,
                     on_nonfinite="skip", carry_state=carry_state)
    clean = _train(backend, stream=_without(bad), steps=12, carry_state=carry_state)
    model, history = skipped
    assert history.skipped == 2 and history.skipped_step == [3, 9]
    assert history.batches == 14 and history.updates == 12
    assert 3 not in history.step and 9 not in history.step
    for name in model.params:
        np.testing.assert_array_equal(model.params[name], clean[0].params[name], err_msg=name)
    assert history.loss == clean[1].loss  # the same updates, in the same order


def test_raise_is_the_default_for_nonfinite_batches(backend):
    with pytest.raises(FloatingPointError, match="batch 2"):
        _train(backend, stream=_stream(big_target_at={2}), steps=5)
    with pytest.raises(ValueError, match="x contains NaN"):
        _train(backend, stream=_stream(nan_at={2}), steps=5)


def test_skip_raises_after_max_nonfinite_in_a_row(backend):
    stream = _stream(nan_at={2, 3, 4})
    with pytest.raises(FloatingPointError, match=r"3 batches in a row.*batches 2\.\.4"):
        _train(backend, stream=stream, steps=10, on_nonfinite="skip", max_nonfinite=3)
    _, history = _train(backend, stream=_stream(nan_at={2, 3, 4}), steps=10, on_nonfinite="skip",
                        max_nonfinite=4)
    assert history.skipped_step == [2, 3, 4]


def test_skipped_batches_and_the_run_of_them_survive_a_resume(backend, tmp_path):
    path = tmp_path / "ck.npz"
    kw = dict(on_nonfinite="skip", max_nonfinite=3, every=1, steps=12)
    reference = _train(backend, stream=_stream(nan_at={4, 5, 9}), **kw)
    with pytest.raises(Interrupted):
        _train(backend, path, stream=_stream(6, nan_at={4, 5, 9}), **kw)
    _assert_same_run(_train(backend, path, stream=_stream(nan_at={4, 5, 9}), **kw), reference)
    # two in a row before the interruption, a third after it: the count carried over
    path.unlink()
    with pytest.raises(Interrupted):
        _train(backend, path, stream=_stream(6, nan_at={4, 5, 6}), **kw)
    with pytest.raises(FloatingPointError, match="3 batches in a row"):
        _train(backend, path, stream=_stream(nan_at={4, 5, 6}), **kw)


class MomentumSGD:
    """An optimizer keeping only its mutable state in ``state_dict()``: a 0-d int64 "step" and
    one slot array per parameter under "velocity/<param name>" (the interface every fb.optim
    optimizer offers), so that checkpoints are seen to depend on nothing more."""

    def __init__(self, params, lr=0.05, momentum=0.9):
        self.params, self.lr, self.momentum, self.step_count = params, lr, momentum, 0
        self.velocity = {k: np.zeros_like(v) for k, v in params.items()}

    def step(self, grads):
        self.step_count += 1
        for name, p in self.params.items():
            v = self.velocity[name]
            v *= self.momentum
            v += grads[name]
            p -= self.lr * v

    def state_dict(self):
        out = {"step": np.array(self.step_count, dtype=np.int64)}
        out.update({f"velocity/{k}": v.copy() for k, v in self.velocity.items()})
        return out

    def load_state_dict(self, d):
        want = {"step", *(f"velocity/{k}" for k in self.velocity)}
        if set(d) != want:
            raise ValueError(f"state_dict keys {sorted(d)} are not {sorted(want)}")
        for k, v in self.velocity.items():
            if d[f"velocity/{k}"].shape != v.shape:
                raise ValueError(f"state_dict['velocity/{k}'] has the wrong shape")
        self.step_count = int(d["step"])
        for k, v in self.velocity.items():
            v[...] = d[f"velocity/{k}"]


def test_a_run_resumes_with_an_optimizer_that_saves_only_its_mutable_state(backend, tmp_path):
    def train(path, stream):
        model = _model(backend, "gru")
        fit(model, stream, steps=15, optimizer=MomentumSGD(model.params), progress=False,
            carry_state=True, checkpoint=path, checkpoint_every=2 if path else None)
        return model
    reference = train(None, _stream())
    path = tmp_path / "ck.npz"
    with pytest.raises(Interrupted):
        train(path, _stream(9))
    ck = load_checkpoint(path)
    assert ck.optimizer == "MomentumSGD" and ck.optimizer_state["step"].dtype == np.int64
    assert int(ck.optimizer_state["step"]) == 8
    resumed = train(path, _stream())
    for name in reference.params:
        np.testing.assert_array_equal(resumed.params[name], reference.params[name], err_msg=name)
