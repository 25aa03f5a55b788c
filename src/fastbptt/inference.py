"""Inference without a cache: ``predict`` over whole sequences, ``step`` one time step at a time.

``forward`` keeps every state and gate of every layer for ``backward``: O(T·B·H) per layer.
Inference needs none of it. ``predict`` runs the time loop in chunks of steps through all the
layers, carrying each layer's state from one chunk to the next and applying the readout to
each chunk's top states as soon as they exist, so that besides the output it holds one chunk's
worth of states and gates per layer, whatever T is:

    x (T, B, I) --chunk 0--> layer 0 -> layer 1 -> ... -> readout -> out[0:C]
                --chunk 1--> layer 0 -> layer 1 -> ... -> readout -> out[C:2C]   (states carried)

A chunk is the whole sequence when the sequence is short (at most ``WHOLE_SEQUENCE_STEPS``)
or its gates are small, so the hoisted input projection stays one product; otherwise about ``CHUNK_ROWS`` rows (C·B),
at most ``MAX_CHUNK_STEPS`` steps, enough that the per-call costs (packing W_hh, the call
itself) are a few percent of the products.

A bidirectional layer is the exception: its reverse direction starts at each sequence's end,
so a layer's whole output must exist before the layer above can start. Then each layer's
output (T, B, 2H) is held (two such buffers, the one being read and the one being written);
each direction still runs in chunks and nothing is kept for a backward pass.

Both functions take the parameters as they are in ``model.params`` (no copy) and run the same
backend kernels as ``forward``, so their results equal forward's up to the rounding of sums
split across chunks (``step``: chunks of one step).
"""
import numpy as np

from . import _backend
from ._packing import Packing
from ._validation import check_array, check_lengths
from .model import EMBEDDING, check_ids

__all__ = ["predict", "step", "chunk_steps", "CHUNK_ROWS", "MAX_CHUNK_STEPS",
           "WHOLE_SEQUENCE_ELEMENTS", "WHOLE_SEQUENCE_STEPS"]

# A chunk's rows (steps x batch): each call packs W_hh anew (G·H·H copies), which costs about
# as much as 8 rows of the step products (G·H·H multiply-adds each, register-tiled), so 512
# rows keep it near 1.5%.
CHUNK_ROWS = 512
# At most this many steps a chunk: then the memory beyond the output is about 64/T of
# forward's whatever B (0.5-0.8% at T = 10,000 in the tests); at batches small enough to reach
# this cap a step's product is memory-bound like the packing, which then costs about one step
# in 64.
MAX_CHUNK_STEPS = 64
# A sequence whose gates (T·B·G·H) are at most this many elements runs as one chunk: 64 KiB of
# float32, an L2-resident cache, and one input-projection product instead of several.
WHOLE_SEQUENCE_ELEMENTS = 16 * 1024
# So does a sequence of at most this many steps, whatever its batch: measured at the small and
# medium shapes (T = 100 and 50), chunks of 512 rows made predict 7-18 % slower than one
# forward call (each chunk packs W_hh and splits the hoisted products again), and a sequence
# this short holds no more than forward's own output and one layer's gates.
WHOLE_SEQUENCE_STEPS = 256

_GATES = {"tanh": 1, "relu": 1, "lstm": 4, "gru": 3}


def chunk_steps(T, B, gates_width):
    """How many steps ``predict`` runs per chunk for a sequence of T steps, batch B, and a
    layer whose gates are ``gates_width`` (G·H) wide."""
    if T <= WHOLE_SEQUENCE_STEPS or T * B * gates_width <= WHOLE_SEQUENCE_ELEMENTS:
        return T
    return min(T, MAX_CHUNK_STEPS, max(1, -(-CHUNK_ROWS // B)))


_RUNNERS = {}


def _runner(kernels, cell):
    """run(x (C, B, I), state (S arrays (B, H)), weights, sizes) -> (hs (C+1, B, H), the runs
    of the state's arrays, each (C+1, B, H)): one layer-direction over a chunk, made once per
    backend and cell."""
    key = (kernels.__name__, cell)
    run = _RUNNERS.get(key)
    if run is not None:
        return run
    if cell == "lstm":
        def run(x, state, w, sizes):
            hs, cs, _ = kernels.lstm_forward(x, state[0], state[1], *w, sizes)
            return hs, (hs, cs)
    elif cell == "gru":
        def run(x, state, w, sizes):
            hs, _ = kernels.gru_forward(x, state[0], *w, sizes)
            return hs, (hs,)
    else:
        relu = cell == "relu"

        def run(x, state, w, sizes):
            hs = kernels.elman_forward(x, state[0], *w, relu, sizes)
            return hs, (hs,)
    _RUNNERS[key] = run
    return run


_LAYOUTS = {}


def _layout(cell, I, H, L, D, O):
    """((name, shape) of w_ih, w_hh, b_ih, b_hh for each layer-direction in PyTorch's order,
    (name, shape) of the readout's weight and bias or None), made once per configuration."""
    key = (cell, I, H, L, D, O)
    layout = _LAYOUTS.get(key)
    if layout is None:
        G = _GATES[cell]
        layers = []
        for k in range(L):
            I_k = I if k == 0 else D * H
            for suffix in ("", "_reverse")[:D]:
                layers.append(((f"weight_ih_l{k}{suffix}", (G * H, I_k)),
                               (f"weight_hh_l{k}{suffix}", (G * H, H)),
                               (f"bias_ih_l{k}{suffix}", (G * H,)),
                               (f"bias_hh_l{k}{suffix}", (G * H,))))
        readout = None if O is None else (("weight_out", (O, D * H)), ("bias_out", (O,)))
        layout = _LAYOUTS[key] = (layers, readout)
    return layout


class _Plan:
    """What one call needs from the model, read once: the kernels and each layer-direction's
    weights (views of model.params, checked for shape, dtype and contiguity)."""

    __slots__ = ("cell", "kernels", "H", "L", "D", "S", "dtype", "input_size", "out_size",
                 "weights", "readout", "run", "embedding", "model")

    def __init__(self, model):
        self.cell = cell = model.cell
        self.kernels = _backend.resolve(model.backend)[1]
        self.H, self.L, self.D = model.hidden_size, model.num_layers, model.num_directions
        self.S = 2 if cell == "lstm" else 1
        self.dtype = model.dtype
        self.input_size = model.input_size
        params = model.params
        if not isinstance(params, dict):
            raise TypeError(f"model.params must be a dict, got {type(params).__name__}")
        first_in = model.embedding_size or self.input_size
        layers, readout = _layout(cell, first_in, self.H, self.L, self.D, model.output_size)
        check = self._param
        self.model = model
        self.embedding = None
        if model.embedding_size is not None:
            self.embedding = check(params, EMBEDDING, (self.input_size, model.embedding_size))
        self.weights = [tuple([check(params, name, shape) for name, shape in spec])
                        for spec in layers]
        self.readout = None
        self.out_size = self.D * self.H
        if readout is not None:
            self.readout = tuple([check(params, name, shape) for name, shape in readout])
            self.out_size = model.output_size
        self.run = _runner(self.kernels, cell)

    def _param(self, params, name, shape):
        a = params.get(name)
        # The kernels read raw memory: shape, dtype and layout are checked at every call (a few
        # attribute reads). The values are not scanned for NaN here (forward does, at the cost
        # of a pass over every weight): a non-finite weight gives non-finite outputs, not a crash.
        if not (type(a) is np.ndarray and a.dtype == self.dtype and a.shape == shape
                and a.flags.c_contiguous):
            if a is None:
                raise ValueError(f"model.params lacks {name!r}")
            check_array(f"params[{name!r}]", a, shape, self.dtype, finite=False,
                        copy_strided=False)
        return a

    def check_input(self, name, x, ndim):
        """Layer 0's input from x: ids (...) of ``ndim - 1`` dimensions (embedded when the
        model has an embedding), or floats (..., I) of ``ndim`` dimensions, checked as forward
        checks them (check_array), in
        a few attribute reads when it is already right."""
        if type(x) is np.ndarray and x.dtype.kind in "iu" and x.ndim == ndim - 1:
            ids = check_ids(name, x, (None,) * (ndim - 1), self.input_size)
            return ids if self.embedding is None else np.take(self.embedding, ids, axis=0)
        if self.embedding is not None or (type(x) is np.ndarray and x.ndim == ndim - 1):
            # not ids the model takes: its checks word the error
            return self.model._check_input(name, x, (None,) * (ndim - 1) + (self.input_size,))[0]
        if (type(x) is np.ndarray and x.dtype == self.dtype and x.ndim == ndim and x.size
                and x.shape[-1] == self.input_size and x.flags.c_contiguous
                and self.kernels.all_finite(x)):
            return x
        return check_array(name, x, (None,) * (ndim - 1) + (self.input_size,), self.dtype,
                           finite_check=self.kernels.all_finite)

    def check_state(self, name, value, B):
        """A public state (h, or (h, c) for an LSTM), checked: a list of S arrays (D·L, B, H)
        (the caller's own when contiguous: they are only read), or None."""
        if value is None:
            return None
        shape = (self.L * self.D, B, self.H)
        finite = self.kernels.all_finite
        if self.cell == "lstm":
            if not isinstance(value, (tuple, list)) or len(value) != 2:
                raise TypeError(f"{name} of an LSTM must be a pair (h, c) of arrays {shape}, "
                                f"got {type(value).__name__}")
            return [check_array(f"{name}[{i}]", v, shape, self.dtype, finite_check=finite)
                    for i, v in enumerate(value)]
        return [check_array(name, value, shape, self.dtype, finite_check=finite)]

    def public_state(self, state):
        return (state[0], state[1]) if self.S == 2 else state[0]


def predict(model, x, h0=None, lengths=None):
    """``model.forward(x, h0, lengths)``'s (out, h_n), keeping nothing for ``backward``.

    x (T, B, I), or integer ids (T, B) as ``forward`` takes them; h0 (D·L, B, H) or None (zeros), for an LSTM a pair (h0, c0); lengths None
    or (B,) ints in [1, T] (PyTorch's PackedSequence semantics, as in ``forward``).
    Returns out (T, B, O) with a readout, else (T, B, D·H), zero past each sequence's end;
    h_n (D·L, B, H) (an LSTM: (h_n, c_n)), each sequence's state at its own last step.
    Besides out, the memory held is one chunk of steps per layer (``chunk_steps``), and for a
    bidirectional model each layer's whole output (see the module's docstring).
    Nothing the caller passes is modified; the model's cache for ``backward`` is untouched.
    """
    plan = _Plan(model)
    x = plan.check_input("x", x, 3)
    T, B = x.shape[:2]
    state = plan.check_state("h0", h0, B)
    packing = None if lengths is None else Packing.of(check_lengths(lengths, T, B), T)
    if plan.D == 1:
        out, final = _predict_unidirectional(plan, x, state, packing)
    else:
        out, final = _predict_bidirectional(plan, x, state, packing)
    return out, plan.public_state(final)


def _zeros_state(plan, B):
    return [np.zeros((plan.L * plan.D, B, plan.H), plan.dtype) for _ in range(plan.S)]


def _readout(plan, top):
    """The readout of top (C, B, D·H): (C, B, O); top itself without a readout."""
    if plan.readout is None:
        return top
    C, B, F = top.shape
    w, b = plan.readout
    return plan.kernels.linear_forward(top.reshape(C * B, F), w, b).reshape(C, B, -1)


def _predict_unidirectional(plan, x, state, packing):
    T, B = x.shape[:2]
    H, L, S = plan.H, plan.L, plan.S
    C = chunk_steps(T, B, _GATES[plan.cell] * H)
    if state is None:
        carried = [[np.zeros((B, H), plan.dtype) for _ in range(S)] for _ in range(L)]
    else:
        if packing is not None:
            state = [packing.sort(s, axis=1) for s in state]
        carried = [[s[k] for s in state] for k in range(L)]
    final = _zeros_state(plan, B) if packing is not None else None
    run, weights = plan.run, plan.weights
    out = None
    for start in range(0, T, C):
        stop = min(start + C, T)
        layer_in = x[start:stop] if packing is None else packing.sort(x[start:stop])
        sizes = None if packing is None else packing.batch_sizes[start:stop]
        for k in range(L):
            hs, runs = run(layer_in, carried[k], weights[k], sizes)
            carried[k] = [r[-1].copy() for r in runs]   # not a view: the chunk is freed
            if packing is not None:
                _take_final_states(final, k, runs, packing, start, stop)
            layer_in = hs[1:]
        chunk_out = _readout(plan, layer_in)
        if packing is not None:
            if plan.readout is not None:
                chunk_out[packing.finished[start:stop]] = 0   # the readout's bias is not zero
            chunk_out = packing.unsort(chunk_out)
        if start == 0 and stop == T:
            out = chunk_out
        else:
            if out is None:
                out = np.empty((T, B, plan.out_size), plan.dtype)
            out[start:stop] = chunk_out
            # this chunk's states go before the next chunk's are made
            hs = runs = layer_in = chunk_out = None
    if packing is not None:
        final = [packing.unsort(s, axis=1) for s in final]
    else:
        # carried holds copies, never views of out
        final = [carried[0][s][None] if L == 1 else np.stack([carried[k][s] for k in range(L)])
                 for s in range(S)]
    return out, final


def _take_final_states(final, index, runs, packing, start, stop):
    """Into final[s][index], the states of the sorted sequences that end within steps
    start..stop-1, taken from this chunk's runs (the kernels zero a finished sequence's
    states, so its h_n must be taken at its own end)."""
    ends = packing.ending_in(start, stop)
    if ends.size:
        steps = packing.lengths[ends] - start
        for s, r in zip(final, runs):
            s[index, ends] = r[steps, ends]


def _predict_bidirectional(plan, x, state, packing):
    T, B = x.shape[:2]
    H, L, D, S = plan.H, plan.L, plan.D, plan.S
    C = chunk_steps(T, B, _GATES[plan.cell] * H)
    if state is None:
        state = _zeros_state(plan, B)
    elif packing is not None:
        state = [packing.sort(s, axis=1) for s in state]
    final = _zeros_state(plan, B)
    layer_in = x if packing is None else packing.sort(x)
    flip = None if packing is None else packing.flip
    rows = np.arange(B)
    for k in range(L):
        top = np.empty((T, B, D * H), plan.dtype)
        for d in range(D):
            index = k * D + d
            carried = [s[index] for s in state]
            for start in range(0, T, C):
                stop = min(start + C, T)
                sizes = None if packing is None else packing.batch_sizes[start:stop]
                if d == 0:
                    chunk_in = layer_in[start:stop]
                elif flip is None:
                    # the reverse direction's steps start..stop count from the end
                    chunk_in = np.ascontiguousarray(layer_in[T - stop:T - start][::-1])
                else:
                    chunk_in = layer_in[flip[start:stop], rows]
                hs, runs = plan.run(chunk_in, carried, plan.weights[index], sizes)
                carried = [r[-1].copy() for r in runs]
                if packing is not None:
                    _take_final_states(final, index, runs, packing, start, stop)
                cols = slice(d * H, (d + 1) * H)
                if d == 0:
                    top[start:stop, :, cols] = hs[1:]
                elif flip is None:
                    top[T - stop:T - start, :, cols] = hs[:0:-1]
                else:
                    # reversed step t of sequence b lands at time flip[t, b]; past its end the
                    # kernels wrote zeros, and flip leaves those steps in place
                    top[flip[start:stop], rows, cols] = hs[1:]
            if packing is None:
                for s, c in zip(final, carried):
                    s[index] = c
        layer_in = top
    out = _readout(plan, layer_in)
    if packing is not None:
        if plan.readout is not None:
            out[packing.finished] = 0
        out = packing.unsort(out)
        final = [packing.unsort(s, axis=1) for s in final]
    return out, final


def step(model, x_t, state=None):
    """One time step of a unidirectional model: (y_t, state).

    x_t (B, I), or integer ids (B,); state: the previous call's, or None for zeros: (L, B, H), for an LSTM a pair
    (h, c) of such arrays (``forward``'s h0/h_n layout). Returns y_t (B, O) with a readout,
    else (B, H), and the new state (new arrays; the one passed in is not modified). Chained
    over a sequence, the steps give ``predict``'s outputs and final state.
    """
    if model.bidirectional:
        raise ValueError("step() needs a unidirectional model: a bidirectional layer's reverse "
                         "direction reads the sequence from its end; use predict() on the "
                         "whole sequence instead")
    plan = _Plan(model)
    x_t = plan.check_input("x_t", x_t, 2)
    B = x_t.shape[0]
    state = plan.check_state("state", state, B)
    H, L, S = plan.H, plan.L, plan.S
    new = [np.empty((L, B, H), plan.dtype) for _ in range(S)]
    layer_in = x_t[None]
    for k in range(L):
        carried = ([np.zeros((B, H), plan.dtype)] * S if state is None
                   else [s[k] for s in state])
        hs, runs = plan.run(layer_in, carried, plan.weights[k], None)
        for s, r in zip(new, runs):
            s[k] = r[1]
        layer_in = hs[1:]
    y = _readout(plan, layer_in)[0]
    return y, plan.public_state(new)
