"""Training loop: mini-batches, a loss, an optimizer, clipping, truncated BPTT, history.

``fit`` runs Williams & Peng's BPTT(k1, k2) on each batch: every k1 steps of the sequence it
backpropagates through the last k2 steps, scoring only the k1 steps that are new since the
previous update, and carries the hidden state forward from the forward pass. k1 = k2 is
min-char-rnn's chunked training; k1 = T with k2 ≥ T is full BPTT, exactly.
"""
import itertools
import json
import math
import os
import time
from dataclasses import dataclass, field

import numpy as np

from . import losses as _losses
from ._flat import FlatArrays
from ._validation import check_positive_int, check_positive_number
from .checkpoint import load_checkpoint, save_checkpoint
from .clip import clip_grad_norm, clip_grad_value, sum_squares
from .optim import Optimizer

__all__ = ["History", "fit", "evaluate", "load_checkpoint"]

LOSSES = _losses.LOSSES


@dataclass
class History:
    """What ``fit`` measured, for printing and plotting.

    step: the batch index of each entry of ``loss`` and ``grad_norm`` (every
    ``log_every``-th batch and the last one trained); loss: that batch's training loss (summed over its
    scored steps, mean over the batch); grad_norm: the joint gradient norm of its last update
    before clipping; eval_step / eval_loss: the held-out loss after every ``eval_every``-th
    batch and after the last one trained, each batch once; batches and
    updates: batches trained and optimizer updates made; seconds: wall time of the loop.
    skipped_step: the batches whose update was dropped for a non-finite loss, gradient or
    input (``on_nonfinite="skip"``); skipped: how many.
    """

    step: list = field(default_factory=list)
    loss: list = field(default_factory=list)
    grad_norm: list = field(default_factory=list)
    eval_step: list = field(default_factory=list)
    eval_loss: list = field(default_factory=list)
    batches: int = 0
    updates: int = 0
    seconds: float = 0.0
    skipped_step: list = field(default_factory=list)
    skipped: int = 0

    @property
    def steps_per_second(self):
        """Batches trained per second of the loop."""
        return self.batches / self.seconds if self.seconds > 0 else math.nan


def _unpack(batch, what):
    """(x, target, lengths) from a batch (x, target) or (x, target, lengths)."""
    try:
        x, target, *rest = batch
    except (TypeError, ValueError):
        rest = None
    if rest is None or len(rest) > 1:
        raise ValueError(f"{what} must be (x, target) or (x, target, lengths)")
    return x, target, rest[0] if rest else None


def evaluate(model, x, target, *, loss="mse", last_step=False, h0=None, lengths=None):
    """The loss of ``model`` on (x, target), full sequence, no update; ``lengths`` as in
    ``model.forward``."""
    out, _ = model.forward(x, h0, lengths=lengths)
    value, _ = _losses.resolve(loss)(out, target, last_step=last_step,
                                     **_losses.with_lengths(lengths))
    return value


def fit(model, batches, *, steps, optimizer, loss="mse", last_step=False, bptt=None,
        clip_norm=None, clip_value=None, clip_step=None, carry_state=False,
        eval_data=None, eval_every=None, progress=True, desc="train", log_every=1,
        checkpoint=None, checkpoint_every=None, on_nonfinite="raise", max_nonfinite=10, comm=None):
    """Train ``model`` on ``steps`` batches drawn from ``batches``.

    batches: an iterable of (x (T, B, I), target) or (x, target, lengths); target as the
        loss wants it: (T, B, O) for mse, int labels (T, B) for cross_entropy, or one step of
        them with last_step; lengths (B,) as in ``model.forward`` (each sequence scored on
        its own steps, or its own last step; not with bptt).
    optimizer: an ``fb.optim`` optimizer over ``model.params``.
    loss: "mse", "cross_entropy" or a callable (out, target, last_step=) -> (loss, d_out),
        also given lengths= for batches that have lengths.
    bptt: None for full BPTT, or (k1, k2) with 1 ≤ k1 ≤ k2: an update every k1 steps
        through the last k2.
    clip_norm, clip_value: whole-gradient clipping before each update; clip_step:
        per-step clipping of δ_t inside the backward sweep.
    carry_state: start each batch from the previous batch's final state (a long stream cut
        into consecutive batches, as in char-level training) instead of zeros.
    eval_data: (x, target) or (x, target, lengths), scored every ``eval_every`` batches and
        at the end.
    checkpoint: None, or a path: fit writes a checkpoint there every ``checkpoint_every``
        batches (None: only at the end), atomically, and at the end. Called again with the
        same arguments while that file exists, fit resumes from it: it loads the parameters,
        the optimizer's state, the history and the carried state, draws and discards the
        batches already trained from ``batches`` (which must yield the same stream again),
        and ends bit-identical to a run never interrupted. A checkpoint of another model,
        optimizer class or training setup is refused (ValueError). Read one with
        :func:`load_checkpoint`.
    on_nonfinite: "raise" (FloatingPointError naming the batch when the loss or a gradient
        is not finite), or "skip": a batch whose input, target, loss or gradient is not
        finite has that update dropped (and its later BPTT windows; the carried state stays
        the one it started from), is counted in ``history.skipped``/``skipped_step``, and fit
        raises FloatingPointError after ``max_nonfinite`` such batches in a row.
    comm: an mpi4py communicator for data-parallel training (fastbptt.distributed): each
        rank's ``batches`` are its shard of the global batches, eval_data is the whole set
        on every rank; every update, and the History on every rank, equal one process's on
        the concatenated batches; rank 0 alone shows progress and writes the checkpoint; a
        rank that raises ends the job.
    Returns a :class:`History`.
    """
    steps = check_positive_int("steps", steps)
    log_every = check_positive_int("log_every", log_every)
    loss_fn = _losses.resolve(loss)
    clip_norm = check_positive_number("clip_norm", clip_norm)
    clip_value = check_positive_number("clip_value", clip_value)
    if bptt is not None:
        k1, k2 = (check_positive_int("bptt[0]", bptt[0]), check_positive_int("bptt[1]", bptt[1]))
        if k1 > k2:
            raise ValueError(f"bptt=(k1, k2) needs k1 <= k2, got {bptt}")
        bptt = (k1, k2)
    if eval_every is not None:
        eval_every = check_positive_int("eval_every", eval_every)
    if on_nonfinite not in ("raise", "skip"):
        raise ValueError(f"on_nonfinite must be 'raise' or 'skip', got {on_nonfinite!r}")
    max_nonfinite = check_positive_int("max_nonfinite", max_nonfinite)
    checkpoint = _check_checkpoint(checkpoint, checkpoint_every, optimizer)
    if checkpoint_every is not None:
        checkpoint_every = check_positive_int("checkpoint_every", checkpoint_every)
    run = None
    if comm is not None:  # data-parallel: the agreement, reductions and shards live there
        from .distributed import FitRun
        run = FitRun(model, comm, loss_fn, steps=steps, loss=loss, last_step=last_step, bptt=bptt,
                     clip=(clip_norm, clip_value, clip_step), carry_state=carry_state,
                     eval_every=eval_every, has_eval=eval_data is not None)
        loss_fn, batches, progress = run.loss_fn, run.batches(batches), progress and run.is_root
        eval_data = run.shard_eval(eval_data)
    if eval_data is not None:
        eval_x, eval_target, eval_lengths = _unpack(eval_data, "eval_data")

        def score():
            return evaluate(model, eval_x, eval_target, loss=loss, last_step=last_step,
                            lengths=eval_lengths)
        if run is not None:
            score = run.score(score, eval_data)
    # What shapes the run besides the model and the optimizer: a checkpoint written under
    # other settings would resume into a run that neither of them describes.
    setup = json.loads(json.dumps({
        "loss": loss if isinstance(loss, str) else "<callable>", "last_step": bool(last_step),
        "bptt": bptt, "clip_norm": clip_norm, "clip_value": clip_value, "clip_step": clip_step,
        "carry_state": bool(carry_state), "log_every": log_every, "eval_every": eval_every,
        "on_nonfinite": on_nonfinite, "max_nonfinite": max_nonfinite}, default=repr))
    history = History()
    state = None
    last = None  # (batch index, loss, gradient norm) of the last batch trained
    first, in_a_row = 0, 0
    if checkpoint is not None and os.path.exists(checkpoint):
        first, history, state, in_a_row, done = _resume(checkpoint, model, optimizer, setup, steps)
        if done:  # the run ended (steps reached, or the stream ran out): nothing to do again
            return history
    batches = iter(batches)
    # The stream is deterministic: its first batches are those the checkpoint has trained.
    if sum(1 for _ in itertools.islice(batches, first)) < first:
        raise ValueError(f"batches ran out before the {first} batches the checkpoint has trained")

    def save(step, done=False):
        if run is not None and not run.is_root:  # every rank holds the same; one writes
            return
        history.seconds = seconds_before + time.perf_counter() - started
        save_checkpoint(checkpoint, model=model, optimizer=optimizer, step=step, history=history,
                        state=state if carry_state else None, fit=setup,
                        loop={"nonfinite_in_a_row": in_a_row, "done": done, "steps": steps})

    bar = _progress(steps, desc, first) if progress else None
    seconds_before = history.seconds
    started = time.perf_counter()
    try:
        for step, batch in zip(range(first, steps), batches):
            x, target, lengths = _unpack(batch, f"batch {step}")
            if lengths is not None and bptt is not None:
                raise ValueError("bptt (truncated BPTT) and batches with lengths cannot be combined")
            h0 = state if carry_state else None
            try:
                if on_nonfinite == "skip":
                    _check_finite_batch(x, target, step)
                value, norm, new_state = _train_batch(model, x, target, lengths, h0, loss_fn, last_step,
                                                      bptt, optimizer, clip_norm, clip_value, clip_step,
                                                      history, step, run)
            except _NonFinite as exc:
                if on_nonfinite == "raise":
                    raise
                history.skipped += 1
                history.skipped_step.append(step)
                in_a_row += 1
                if in_a_row >= max_nonfinite:
                    raise FloatingPointError(f"{in_a_row} batches in a row were not finite (batches "
                                             f"{step - in_a_row + 1}..{step}); the last: {exc}") from exc
                value = None
            else:
                in_a_row = 0
                state = new_state
            history.batches += 1
            if value is not None:
                last = (step, value, norm)
                if step % log_every == 0:
                    _log(history, *last)
            if eval_data is not None and eval_every is not None and (step + 1) % eval_every == 0:
                history.eval_step.append(step)
                history.eval_loss.append(score())
            if checkpoint_every is not None and (step + 1) % checkpoint_every == 0 and step + 1 < steps:
                save(step + 1)
            if bar is not None and value is not None:
                postfix = {"loss": f"{value:.4g}"}
                if history.eval_loss:
                    postfix["eval"] = f"{history.eval_loss[-1]:.4g}"
                bar.set_postfix(postfix, refresh=False)
                bar.update(1)
    except BaseException:
        if run is not None:
            run.abort()
        raise
    finally:
        if bar is not None:
            bar.close()
    history.seconds = seconds_before + time.perf_counter() - started
    # The last batch trained is always logged and evaluated, once: it may be the last of
    # ``steps`` or of ``batches``, and may already be a log_every or eval_every batch.
    if last is not None and (not history.step or history.step[-1] != last[0]):
        _log(history, *last)
    final = history.batches - 1
    if eval_data is not None and final >= 0 and (not history.eval_step or history.eval_step[-1] != final):
        history.eval_step.append(final)
        history.eval_loss.append(score())
    if checkpoint is not None:
        save(history.batches, done=True)
    return history


def _log(history, step, value, norm):
    history.step.append(step)
    history.loss.append(value)
    history.grad_norm.append(norm)


class _NonFinite(FloatingPointError):
    """A batch's input, target, loss or gradient is not finite (``on_nonfinite`` decides)."""


def _check_finite_batch(x, target, step):
    for name, a in (("x", x), ("target", target)):
        if isinstance(a, np.ndarray) and a.dtype.kind in "fc" and not np.isfinite(a).all():
            raise _NonFinite(f"the {name} of batch {step} is not finite")


def _check_checkpoint(checkpoint, checkpoint_every, optimizer):
    """The checkpoint path (a str) or None, after checking that it can be written."""
    if checkpoint is None:
        if checkpoint_every is not None:
            raise ValueError("checkpoint_every needs checkpoint=path")
        return None
    try:
        checkpoint = os.fspath(checkpoint)
    except TypeError:
        raise TypeError(f"checkpoint must be a path, got {type(checkpoint).__name__}") from None
    if not isinstance(checkpoint, str):
        checkpoint = os.fsdecode(checkpoint)
    folder = os.path.dirname(os.path.abspath(checkpoint))
    if not os.path.isdir(folder):
        raise ValueError(f"checkpoint's folder {folder!r} does not exist")
    if os.path.isdir(checkpoint):
        raise ValueError(f"checkpoint {checkpoint!r} is a folder, not a file")
    if not (callable(getattr(optimizer, "state_dict", None))
            and callable(getattr(optimizer, "load_state_dict", None))):
        raise TypeError("checkpoint needs an optimizer with state_dict() and load_state_dict() "
                        f"(an fb.optim optimizer), got {type(optimizer).__name__}")
    return checkpoint


def _resume(path, model, optimizer, setup, steps):
    """Load the checkpoint at ``path`` into ``model`` and ``optimizer``; returns (batches
    trained, history, carried state, non-finite batches in a row, whether the run ended)."""
    ck = load_checkpoint(path, backend=model.backend)
    if ck.model.config != model.config:
        raise ValueError(f"checkpoint {path!s} holds another model: {ck.model.config}, "
                         f"this one is {model.config}")
    if ck.optimizer != type(optimizer).__name__:
        raise ValueError(f"checkpoint {path!s} holds the state of a {ck.optimizer} optimizer, "
                         f"this one is {type(optimizer).__name__}")
    if ck.fit != setup:
        differ = sorted(k for k in set(setup) | set(ck.fit) if setup.get(k) != ck.fit.get(k))
        raise ValueError(f"checkpoint {path!s} was written by fit with other settings: "
                         + ", ".join(f"{k}={ck.fit.get(k)!r} there, {setup.get(k)!r} here" for k in differ))
    if ck.step > steps:
        raise ValueError(f"checkpoint {path!s} has trained {ck.step} batches, more than steps={steps}")
    optimizer.load_state_dict(ck.optimizer_state)
    model.load_state_dict(ck.model.params)
    # A finished run asked for more steps goes on from where it ended.
    done = bool(ck.loop.get("done")) and ck.loop.get("steps") == steps
    return ck.step, ck.history, ck.state, int(ck.loop.get("nonfinite_in_a_row", 0)), done


def _train_batch(model, x, target, lengths, h0, loss_fn, last_step, bptt, optimizer,
                 clip_norm, clip_value, clip_step, history, step, run=None):
    """BPTT(k1, k2) over one batch; returns (its loss, its last gradient norm, the final state).

    On one process this is ``model.train_step``'s path: nothing writes the parameters between
    a window's forward and its backward, so the forward runs on them without a snapshot, a
    built-in loss's d_out is not checked again, and the update takes backward's flat
    gradients as they are. The forward cache, which holds the live parameters, is dropped
    when the batch ends."""
    T = x.shape[0]
    k1, k2 = bptt if bptt is not None else (T, T)
    direct = run is None   # data-parallel: the reduction needs the gradients' dict (and hook)
    d_out_checked = direct and loss_fn in LOSSES.values()
    total = 0.0
    start, prev_end, state = 0, 0, h0
    try:
        while prev_end < T:
            end = min(prev_end + k1, T)
            out, h_n = model.forward(x[start:end], state, lengths=lengths, _snapshot=not direct)
            n_new = end - prev_end  # the steps no earlier update has scored
            if lengths is not None:  # one window over the whole batch (no bptt)
                value, d_out = loss_fn(out, target, last_step=last_step, lengths=lengths)
            elif last_step:
                if end == T:
                    value, d_out = loss_fn(out, target, last_step=True)
                else:
                    value, d_out = 0.0, np.zeros_like(out)
            else:
                value, d_out = loss_fn(out[-n_new:], target[prev_end:end])
                if n_new < out.shape[0]:  # the window's first steps were scored before
                    if not d_out_checked:
                        d_out = model._check("d_out", d_out, out[-n_new:].shape)
                    d_out = np.concatenate([np.zeros_like(out[:-n_new]), d_out])
            if not math.isfinite(value):
                raise _NonFinite(f"the loss became {value} at batch {step} (steps {prev_end}..{end})")
            total += value
            if direct:
                flat = model.backward(d_out, clip_step=clip_step, input_grad=False,
                                      _d_out_checked=d_out_checked, _flat_only=True)
            else:  # the reduction of each layer's gradients starts as soon as they are final
                g = model.backward(d_out, clip_step=clip_step, input_grad=False,
                                   _on_final=run.backward_hook())
                run.reduce(g)
                flat = g.flat
            if not model.all_finite(flat):  # one scan of the whole buffer; the name if it fails
                grads = FlatArrays(flat, model._layout, "g.params")
                name = next(name for name, grad in grads.items() if not model.all_finite(grad))
                raise _NonFinite(f"the gradient of {name!r} is not finite at batch {step}")
            norm = _update(model, optimizer, flat, clip_norm, clip_value)
            history.updates += 1
            if end < T:
                # The next window reaches k2 steps back from its end; it starts inside this
                # one, whose forward cache holds the state there.
                next_start = max(0, min(end + k1, T) - k2)
                state = model.state_at(next_start - start)
                start = next_start
            else:
                state = h_n
            prev_end = end
    finally:
        if direct:
            model._cache = None   # it ran on the parameters the updates have changed
    return total, norm, state


def _update(model, optimizer, flat, clip_norm, clip_value):
    """Clip the flat gradients and step the optimizer on them; returns their joint norm
    before the global-norm clip."""
    if clip_value is not None:
        clip_grad_value(flat, clip_value)
    if isinstance(optimizer, Optimizer):
        # the global-norm clip folded into the update: one pass over the flat buffers
        if clip_norm is not None:
            return model._optimizer_step(optimizer, flat, clip_norm)
        norm = math.sqrt(model._kernels.sum_squares(flat))
        model._optimizer_step(optimizer, flat, None)
        return norm
    grads = FlatArrays(flat, model._layout, "g.params")
    norm = clip_grad_norm(grads, clip_norm) if clip_norm is not None else _norm(grads)
    optimizer.step(grads)
    return norm


def _norm(grads):
    return float(np.sqrt(sum(sum_squares(g) for g in grads.values())))


def _progress(total, desc, initial=0):
    try:
        from tqdm.auto import tqdm
    except ImportError:  # the loop runs without a bar
        return None
    return tqdm(total=total, initial=initial, desc=desc, unit="batch", dynamic_ncols=True, mininterval=0.5)
