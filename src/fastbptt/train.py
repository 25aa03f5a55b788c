"""Training loop: mini-batches, a loss, an optimizer, clipping, truncated BPTT, history.

``fit`` runs Williams & Peng's BPTT(k1, k2) on each batch: every k1 steps of the sequence it
backpropagates through the last k2 steps, scoring only the k1 steps that are new since the
previous update, and carries the hidden state forward from the forward pass. k1 = k2 is
min-char-rnn's chunked training; k1 = T with k2 ≥ T is full BPTT, exactly.
"""
import math
import time
from dataclasses import dataclass, field

import numpy as np

from . import losses as _losses
from ._validation import check_positive_int, check_positive_number
from .clip import clip_grad_norm, clip_grad_value, sum_squares

__all__ = ["History", "fit", "evaluate"]

LOSSES = {"mse": _losses.mse, "cross_entropy": _losses.cross_entropy}


@dataclass
class History:
    """What ``fit`` measured, for printing and plotting.

    step: the batch index of each entry of ``loss`` and ``grad_norm`` (every
    ``log_every``-th batch and the last); loss: that batch's training loss (summed over its
    scored steps, mean over the batch); grad_norm: the joint gradient norm of its last update
    before clipping; eval_step / eval_loss: held-out loss at those batches; batches and
    updates: batches trained and optimizer updates made; seconds: wall time of the loop.
    """

    step: list = field(default_factory=list)
    loss: list = field(default_factory=list)
    grad_norm: list = field(default_factory=list)
    eval_step: list = field(default_factory=list)
    eval_loss: list = field(default_factory=list)
    batches: int = 0
    updates: int = 0
    seconds: float = 0.0

    @property
    def steps_per_second(self):
        """Batches trained per second of the loop."""
        return self.batches / self.seconds if self.seconds > 0 else math.nan


def _loss_fn(loss):
    if callable(loss):
        return loss
    if loss not in LOSSES:
        raise ValueError(f"loss must be one of {tuple(LOSSES)} or a callable, got {loss!r}")
    return LOSSES[loss]


def _with_lengths(lengths):
    """The keyword arguments that pass ``lengths`` on to a loss: none without lengths, so
    that a callable loss need not take them."""
    return {} if lengths is None else {"lengths": lengths}


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
    value, _ = _loss_fn(loss)(out, target, last_step=last_step, **_with_lengths(lengths))
    return value


def fit(model, batches, *, steps, optimizer, loss="mse", last_step=False, bptt=None,
        clip_norm=None, clip_value=None, clip_step=None, carry_state=False,
        eval_data=None, eval_every=None, progress=True, desc="train", log_every=1, comm=None):
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
    comm: an mpi4py communicator for data-parallel training (fastbptt.distributed): each
        rank's ``batches`` are its shard of the global batches, eval_data is the whole set
        on every rank; every update, and the History on every rank, equal one process's on
        the concatenated batches; rank 0 alone shows progress; a rank that raises ends the job.
    Raises FloatingPointError naming the batch when the loss or a gradient is not finite.
    Returns a :class:`History`.
    """
    steps = check_positive_int("steps", steps)
    loss_fn = _loss_fn(loss)
    clip_norm = check_positive_number("clip_norm", clip_norm)
    clip_value = check_positive_number("clip_value", clip_value)
    if bptt is not None:
        k1, k2 = (check_positive_int("bptt[0]", bptt[0]), check_positive_int("bptt[1]", bptt[1]))
        if k1 > k2:
            raise ValueError(f"bptt=(k1, k2) needs k1 <= k2, got {bptt}")
        bptt = (k1, k2)
    if eval_every is not None:
        eval_every = check_positive_int("eval_every", eval_every)
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
    history = History()
    bar = _progress(steps, desc) if progress else None
    state = None
    started = time.perf_counter()
    try:
        for step, batch in zip(range(steps), batches):
            x, target, lengths = _unpack(batch, f"batch {step}")
            if lengths is not None and bptt is not None:
                raise ValueError("bptt (truncated BPTT) and batches with lengths cannot be combined")
            h0 = state if carry_state else None
            value, norm, state = _train_batch(model, x, target, lengths, h0, loss_fn, last_step, bptt,
                                              optimizer, clip_norm, clip_value, clip_step, history, step,
                                              run)
            history.batches += 1
            if step % log_every == 0 or step == steps - 1:
                history.step.append(step)
                history.loss.append(value)
                history.grad_norm.append(norm)
            if eval_data is not None and eval_every is not None and (step + 1) % eval_every == 0:
                history.eval_step.append(step)
                history.eval_loss.append(score())
            if bar is not None:
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
    history.seconds = time.perf_counter() - started
    if eval_data is not None and (not history.eval_step or history.eval_step[-1] != len(history.step) - 1):
        history.eval_step.append(steps - 1)
        history.eval_loss.append(score())
    return history


def _train_batch(model, x, target, lengths, h0, loss_fn, last_step, bptt, optimizer,
                 clip_norm, clip_value, clip_step, history, step, run=None):
    """BPTT(k1, k2) over one batch; returns (its loss, its last gradient norm, the final state)."""
    T = x.shape[0]
    k1, k2 = bptt if bptt is not None else (T, T)
    total = 0.0
    start, prev_end, state = 0, 0, h0
    while prev_end < T:
        end = min(prev_end + k1, T)
        out, h_n = model.forward(x[start:end], state, lengths=lengths)
        n_new = end - prev_end  # the steps no earlier update has scored
        if lengths is not None:  # one window over the whole batch (no bptt)
            value, d_out = loss_fn(out, target, last_step=last_step, lengths=lengths)
        elif last_step:
            if end == T:
                value, d_out = loss_fn(out, target, last_step=True)
            else:
                value, d_out = 0.0, np.zeros_like(out)
        else:
            value, d_new = loss_fn(out[-n_new:], target[prev_end:end])
            d_out = np.zeros_like(out)
            d_out[-n_new:] = d_new
        if not math.isfinite(value):
            raise FloatingPointError(f"the loss became {value} at batch {step} (steps {prev_end}..{end})")
        total += value
        g = model.backward(d_out, clip_step=clip_step)
        if run is not None:
            run.reduce(g)
        for name, grad in g.params.items():
            if not model._kernels.all_finite(grad):
                raise FloatingPointError(f"the gradient of {name!r} is not finite at batch {step}")
        if clip_value is not None:
            clip_grad_value(g.params, clip_value)
        norm = clip_grad_norm(g.params, clip_norm) if clip_norm is not None else _norm(g.params)
        optimizer.step(g.params)
        history.updates += 1
        if end < T:
            # The next window reaches k2 steps back from its end; it starts inside this one,
            # whose forward cache holds the state there.
            next_start = max(0, min(end + k1, T) - k2)
            state = model._state_at(next_start - start)
            start = next_start
        else:
            state = h_n
        prev_end = end
    return total, norm, state


def _norm(grads):
    return float(np.sqrt(sum(sum_squares(g) for g in grads.values())))


def _progress(total, desc):
    try:
        from tqdm.auto import tqdm
    except ImportError:  # the loop runs without a bar
        return None
    return tqdm(total=total, desc=desc, unit="batch", dynamic_ncols=True, mininterval=0.5)
