"""The table of recurrent cells: what differs between them, in one place.

Every cell is one :class:`Cell` row of :data:`CELLS`: its gate count G (the weights are
(G·H, I) and (G·H, H), PyTorch's layout), the arrays its state is made of ((h,) or (h, c)),
and two adapters onto a backend's layer functions (``_reference`` or a compiled build: the
same names and signatures) that give every cell one calling convention and one return shape:

    cache = cell.forward(kernels, x, state0, w_ih, w_hh, b_ih, b_hh, batch_sizes)
        x (T, B, I) floats, or (T, B) integer ids meaning the one-hot rows (see
        ``_reference``'s docstring); state0: a tuple of the cell's state arrays (B, H) each. cache: the
        tuple the layer's backward needs, whose first ``cell.state_count`` entries are the
        state sequences (T+1, B, H), in the order of ``cell.states`` (state0 first).
    grads = cell.backward(kernels, d_out, d_state_n, x, cache, w_ih, w_hh, clip_step,
                          step_norms, batch_sizes, need_dx, out)
        d_out (T, B, H); d_state_n: a tuple like state0 whose entries may be None, or None.
        grads: :class:`LayerGradients`, with both bias gradients always (as separate arrays,
        also where the kernel computes one for both); grads.dx is None when not ``need_dx``
        or for ids (the kernels then skip its product). out: None, or the four arrays
        (dw_ih, dw_hh, db_ih, db_hh) the weight gradients are written into and returned as
        (C-contiguous, of the weights' shapes and dtype: views of the model's flat buffer).

The model, gradcheck, bench and the tests read this table instead of branching on the cell's
name; adding a cell means a row here, its oracle in ``_reference`` and its compiled kernels.
"""
from dataclasses import dataclass
from functools import partial
from typing import Callable, NamedTuple

import numpy as np

__all__ = ["CELLS", "Cell", "LayerGradients", "get"]


class LayerGradients(NamedTuple):
    """One layer's, one direction's gradients, the same shape for every cell.

    dx (T, B, I), or None (ids, or not asked for); d_state0: a tuple of (B, H) arrays, one per state array of the cell;
    dw_ih (G·H, I), dw_hh (G·H, H), db_ih, db_hh (G·H,): never the same array.
    """

    dx: np.ndarray
    d_state0: tuple
    dw_ih: np.ndarray
    dw_hh: np.ndarray
    db_ih: np.ndarray
    db_hh: np.ndarray


@dataclass(frozen=True)
class Cell:
    """One recurrent cell: see the module's docstring for ``forward`` and ``backward``.

    name: the ``cell=`` of ``fb.RNN``; gates: G; states: the names of its state arrays;
    kernels: the layer functions it calls, by name (both backends have them);
    torch_module: ``(torch, input_size, hidden_size, **kwargs)`` -> the ``torch.nn`` module
    computing the same layer (for the comparisons with PyTorch; torch is imported by the
    caller).
    """

    name: str
    gates: int
    states: tuple
    kernels: tuple
    forward: Callable
    backward: Callable
    torch_module: Callable

    @property
    def state_count(self):
        """How many arrays the state is: 2 for an LSTM's (h, c), 1 otherwise."""
        return len(self.states)


def _finals(d_state_n, count):
    return (None,) * count if d_state_n is None else tuple(d_state_n)


def _elman_forward(relu, kernels, x, state0, w_ih, w_hh, b_ih, b_hh, batch_sizes=None):
    return (kernels.elman_forward(x, state0[0], w_ih, w_hh, b_ih, b_hh, relu, batch_sizes),)


def _both_biases(db, out):
    """b_ih's and b_hh's gradients where a kernel computes one db for both (they enter the
    pre-activation alike): db and a copy of it, out[3] when out is given."""
    if out is None:
        return db, db.copy()
    np.copyto(out[3], db)
    return db, out[3]


def _elman_backward(relu, kernels, d_out, d_state_n, x, cache, w_ih, w_hh, clip_step=None,
                    step_norms=None, batch_sizes=None, need_dx=True, out=None):
    dh_n, = _finals(d_state_n, 1)
    dx, dh0, dw_ih, dw_hh, db = kernels.elman_backward(
        d_out, dh_n, x, cache[0], w_ih, w_hh, relu, clip_step, step_norms, batch_sizes, need_dx,
        None if out is None else out[:3])
    return LayerGradients(dx, (dh0,), dw_ih, dw_hh, *_both_biases(db, out))


def _lstm_forward(kernels, x, state0, w_ih, w_hh, b_ih, b_hh, batch_sizes=None):
    return kernels.lstm_forward(x, state0[0], state0[1], w_ih, w_hh, b_ih, b_hh, batch_sizes)


def _lstm_backward(kernels, d_out, d_state_n, x, cache, w_ih, w_hh, clip_step=None,
                   step_norms=None, batch_sizes=None, need_dx=True, out=None):
    dh_n, dc_n = _finals(d_state_n, 2)
    dx, dh0, dc0, dw_ih, dw_hh, db = kernels.lstm_backward(
        d_out, dh_n, dc_n, x, *cache, w_ih, w_hh, clip_step, step_norms, batch_sizes, need_dx,
        None if out is None else out[:3])
    return LayerGradients(dx, (dh0, dc0), dw_ih, dw_hh, *_both_biases(db, out))


def _gru_forward(kernels, x, state0, w_ih, w_hh, b_ih, b_hh, batch_sizes=None):
    return kernels.gru_forward(x, state0[0], w_ih, w_hh, b_ih, b_hh, batch_sizes)


def _gru_backward(kernels, d_out, d_state_n, x, cache, w_ih, w_hh, clip_step=None,
                  step_norms=None, batch_sizes=None, need_dx=True, out=None):
    dh_n, = _finals(d_state_n, 1)
    dx, dh0, dw_ih, dw_hh, db_ih, db_hh = kernels.gru_backward(
        d_out, dh_n, x, *cache, w_ih, w_hh, clip_step, step_norms, batch_sizes, need_dx, out)
    return LayerGradients(dx, (dh0,), dw_ih, dw_hh, db_ih, db_hh)


def _torch_elman(nonlinearity):
    def build(torch, input_size, hidden_size, **kwargs):
        return torch.nn.RNN(input_size, hidden_size, nonlinearity=nonlinearity, **kwargs)
    return build


CELLS = {
    "tanh": Cell("tanh", 1, ("h",), ("elman_forward", "elman_backward"),
                 partial(_elman_forward, False), partial(_elman_backward, False),
                 _torch_elman("tanh")),
    "relu": Cell("relu", 1, ("h",), ("elman_forward", "elman_backward"),
                 partial(_elman_forward, True), partial(_elman_backward, True),
                 _torch_elman("relu")),
    "lstm": Cell("lstm", 4, ("h", "c"), ("lstm_forward", "lstm_backward"),
                 _lstm_forward, _lstm_backward,
                 lambda torch, input_size, hidden_size, **kwargs:
                     torch.nn.LSTM(input_size, hidden_size, **kwargs)),
    "gru": Cell("gru", 3, ("h",), ("gru_forward", "gru_backward"),
                _gru_forward, _gru_backward,
                lambda torch, input_size, hidden_size, **kwargs:
                    torch.nn.GRU(input_size, hidden_size, **kwargs)),
}


def get(name):
    """The :class:`Cell` called ``name``; anything else is a ValueError listing the cells."""
    try:
        return CELLS[name]
    except (KeyError, TypeError):
        raise ValueError(f"cell must be one of {tuple(CELLS)}, got {name!r}") from None
