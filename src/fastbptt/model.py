"""The ``RNN`` class: parameters, validation and layer stacking around the backend kernels.

The model holds its parameters under PyTorch's names and shapes, checks every array before a
kernel sees it, stacks layers on the backend's one-layer functions and keeps the forward cache
for ``backward``. It never knows which backend it runs on.
"""
import json
import zipfile
import zlib
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

from . import _backend
from ._validation import (
    as_float_dtype,
    check_array,
    check_lengths,
    check_positive_int,
    check_positive_number,
)

CELLS = ("tanh", "relu", "lstm", "gru")
INITS = ("default", "identity", "orthogonal")
GATES = {"tanh": 1, "relu": 1, "lstm": 4, "gru": 3}

FORMAT_VERSION = 1
CONFIG_KEYS = ("input_size", "hidden_size", "cell", "num_layers", "output_size",
               "bidirectional", "init", "dtype", "seed")


class _Packing(NamedTuple):
    """How forward ran a batch of variable lengths (PyTorch's PackedSequence, on padded arrays).

    order: the permutation that sorts the batch longest first (the kernels' row order);
    inverse: its inverse; lengths (B,): the sorted lengths; batch_sizes (T,): how many
    sequences still run at each step; finished (T, B): True past each sorted sequence's end;
    flip (T, B): the time index that reverses each sorted sequence within its own length
    (for the reverse direction).
    """

    order: np.ndarray
    inverse: np.ndarray
    lengths: np.ndarray
    batch_sizes: np.ndarray
    finished: np.ndarray
    flip: np.ndarray

    @classmethod
    def of(cls, lengths, T):
        order = np.argsort(-lengths, kind="stable")
        sorted_lengths = lengths[order]
        steps = np.arange(T)[:, None]
        finished = steps >= sorted_lengths
        batch_sizes = np.ascontiguousarray(np.count_nonzero(~finished, axis=1), dtype=np.intp)
        flip = np.where(finished, steps, sorted_lengths - 1 - steps)
        return cls(order, np.argsort(order), sorted_lengths, batch_sizes, finished, flip)

    def sort(self, a, axis=1):
        """a's batch axis in the kernels' order (longest first): a new contiguous array."""
        return np.take(a, self.order, axis=axis)

    def unsort(self, a, axis=1):
        """The inverse of :meth:`sort`: the batch back in the caller's order."""
        return np.take(a, self.inverse, axis=axis)


@dataclass
class Gradients:
    """What :meth:`RNN.backward` returns.

    params: dict with the same keys and shapes as ``model.params``.
    x: (T, B, I), the gradient with respect to the input sequence.
    h0: (L, B, H), the gradient with respect to the initial state.
    step_norms: (L, T, B) ‖∂E/∂s_t‖ of each layer, step and sequence, when asked for.
    """

    params: dict
    x: np.ndarray
    h0: np.ndarray
    step_norms: np.ndarray = field(default=None, repr=False)


class RNN:
    """A stack of recurrent layers with an optional linear readout, trained by BPTT.

    Parameters
    ----------
    input_size, hidden_size : int
    cell : {"tanh", "relu", "lstm", "gru"}
    num_layers : int
    output_size : int or None
        When given, a linear readout ``y_t = s_t W_outᵀ + b_out`` on the last layer.
    bidirectional : bool
    init : {"default", "identity", "orthogonal"}
        "default" is PyTorch's: every weight and bias uniform in ±1/√H. "identity" is the
        IRNN of Le et al. (2015): W_hh = I, biases 0, input weights N(0, 0.001²).
        "orthogonal": W_hh a random orthogonal matrix, the rest as "default".
    dtype : "float32" or "float64"
    seed : int or None
        Seed of the initialisation; the same seed gives the same parameters.
    backend : {"auto", "cython", "numpy"}
    """

    def __init__(self, input_size, hidden_size, *, cell="tanh", num_layers=1, output_size=None,
                 bidirectional=False, init="default", dtype="float32", seed=None, backend="auto"):
        self.input_size = check_positive_int("input_size", input_size)
        self.hidden_size = check_positive_int("hidden_size", hidden_size)
        self.num_layers = check_positive_int("num_layers", num_layers)
        self.output_size = None if output_size is None else check_positive_int("output_size", output_size)
        if cell not in CELLS:
            raise ValueError(f"cell must be one of {CELLS}, got {cell!r}")
        if init not in INITS:
            raise ValueError(f"init must be one of {INITS}, got {init!r}")
        if not isinstance(bidirectional, (bool, np.bool_)):
            raise TypeError(f"bidirectional must be a bool, got {bidirectional!r}")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, (int, np.integer))):
            raise TypeError(f"seed must be an int or None, got {seed!r}")
        if seed is not None and seed < 0:
            raise ValueError(f"seed must be a non-negative int, got {seed}")
        self.cell = cell
        self.bidirectional = bool(bidirectional)
        self.init = init
        self.dtype = as_float_dtype(dtype)
        self.seed = None if seed is None else int(seed)
        self.backend, self._kernels = _backend.resolve(backend)
        self._cache = None
        self.params = self._initial_params(np.random.default_rng(seed))

    # ----------------------------------------------------------------- configuration

    @property
    def num_directions(self):
        return 2 if self.bidirectional else 1

    @property
    def config(self):
        """The constructor's arguments, enough to rebuild the model (``backend`` aside)."""
        return {key: self.dtype.name if key == "dtype" else getattr(self, key) for key in CONFIG_KEYS}

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.config.items())
        return f"RNN({args}, backend={self.backend!r})"

    def param_shapes(self):
        """{name: shape} of every parameter, in PyTorch's order."""
        G, H = GATES[self.cell], self.hidden_size
        shapes = {}
        for k in range(self.num_layers):
            I_k = self.input_size if k == 0 else H * self.num_directions
            for suffix in ("", "_reverse")[: self.num_directions]:
                shapes[f"weight_ih_l{k}{suffix}"] = (G * H, I_k)
                shapes[f"weight_hh_l{k}{suffix}"] = (G * H, H)
                shapes[f"bias_ih_l{k}{suffix}"] = (G * H,)
                shapes[f"bias_hh_l{k}{suffix}"] = (G * H,)
        if self.output_size is not None:
            shapes["weight_out"] = (self.output_size, H * self.num_directions)
            shapes["bias_out"] = (self.output_size,)
        return shapes

    def _initial_params(self, rng):
        H = self.hidden_size
        bound = 1.0 / np.sqrt(H)
        params = {}
        for name, shape in self.param_shapes().items():
            if name in ("weight_out", "bias_out"):
                # nn.Linear's default: uniform in ±1/√fan_in for weight and bias.
                fan_in = H * self.num_directions
                b = 1.0 / np.sqrt(fan_in)
                value = rng.uniform(-b, b, shape)
            elif self.init == "identity":
                if name.startswith("weight_hh"):
                    value = np.eye(H)
                elif name.startswith("weight_ih"):
                    value = rng.normal(0.0, 1e-3, shape)
                else:
                    value = np.zeros(shape)
            elif self.init == "orthogonal" and name.startswith("weight_hh"):
                value = np.concatenate([_orthogonal(H, rng) for _ in range(shape[0] // H)])
            else:
                value = rng.uniform(-bound, bound, shape)
            params[name] = np.ascontiguousarray(value, dtype=self.dtype)
        return params

    # ----------------------------------------------------------------- validation

    def _check_params(self):
        """The parameter arrays, checked; a wrong one raises naming its key."""
        shapes = self.param_shapes()
        params = self.params
        if not isinstance(params, dict):
            raise TypeError(f"model.params must be a dict, got {type(params).__name__}")
        if params.keys() != shapes.keys():
            missing = [k for k in shapes if k not in params]
            extra = [k for k in params if k not in shapes]
            raise ValueError(f"model.params keys do not match the model: missing {missing}, unexpected {extra}")
        all_finite = self._kernels.all_finite
        checked = {}
        for name, shape in shapes.items():
            a = params[name]
            # The common case in a few attribute reads; check_array words the error otherwise.
            if not (type(a) is np.ndarray and a.dtype == self.dtype and a.shape == shape
                    and a.flags.c_contiguous and all_finite(a)):
                check_array(f"params[{name!r}]", a, shape, self.dtype,
                            finite_check=all_finite, copy_strided=False)
            # A copy for the cache: an optimizer may update model.params in place before
            # backward, whose gradients belong to the parameters forward ran with.
            checked[name] = a.copy()
        return checked

    def _check(self, name, a, shape):
        return check_array(name, a, shape, self.dtype, finite_check=self._kernels.all_finite)

    # ----------------------------------------------------------------- forward / backward

    def forward(self, x, h0=None, lengths=None, checkpoint=None):
        """Run the network over a sequence.

        x (T, B, I), time-major. h0: the initial states (D·L, B, H), or None for zeros; for
            an LSTM a pair (h0, c0) of such arrays. D = 2 when bidirectional, and the states
            are ordered as PyTorch's: layer 0 forward, layer 0 reverse, layer 1 forward, ...
        lengths: None, or (B,) ints in [1, T]: PyTorch's PackedSequence semantics on the padded
            x. Sequence b stops after lengths[b] steps: its outputs past the end are zero, its
            h_n is its state at its own last step (for the reverse direction of a
            bidirectional layer, the state after running from its own last step back to its
            first), and its gradients are those of the sequence cut to its length. Steps
            past a sequence's end are not computed.
        checkpoint: None keeps every state for ``backward``. An int k keeps only the states
            at every k-th step and recomputes each k-step segment during ``backward``
            (Chen et al. 2016): with k ≈ √T the cache holds about 2√T states instead of T,
            for one more forward pass. The gradients are those of full BPTT.
        Returns (out, h_n): out (T, B, O) with a readout, else the last layer's states
        (T, B, D·H), directions concatenated (a read-only view of the cache when neither
        lengths nor checkpoint is given); h_n the final states, shaped like h0.
        The cache for ``backward`` is kept; x must not change before ``backward``.
        """
        params = self._check_params()
        x = self._check("x", x, (None, None, self.input_size))
        T, B, _ = x.shape
        if checkpoint is None:
            segment = T
        else:
            segment = check_positive_int("checkpoint", checkpoint)
            if self.bidirectional:
                raise ValueError("checkpoint is not supported with bidirectional=True: the "
                                 "reverse direction needs the whole sequence at once")
        state = self._state_in("h0", h0, B)
        if state is None:
            state = np.zeros((self._state_count, self._layers_and_directions, B, self.hidden_size), self.dtype)
        packing = None
        if lengths is not None:
            packing = _Packing.of(check_lengths(lengths, T, B), T)
            # Longest first, so that the sequences still running at any step are a prefix of
            # the batch: the kernels shrink each step's work to that prefix.
            x = packing.sort(x)
            state = packing.sort(state, axis=2)
            final = np.empty_like(state)
        flip = None if packing is None else packing.flip
        starts = range(0, T, segment)
        segments, out = [], None
        for start in starts:
            stop = min(start + segment, T)
            sizes = None if packing is None else packing.batch_sizes[start:stop]
            initial = state
            inputs, runs, top = self._layers_forward(params, x[start:stop], state, sizes, flip)
            state = self._final_state(runs)
            if packing is not None:
                # The kernels zero a finished sequence's states: its h_n is its state at its
                # own last step, taken in the segment where it ends.
                ends = np.flatnonzero((packing.lengths > start) & (packing.lengths <= stop))
                final[:, :, ends] = self._final_state(runs, packing.lengths[ends] - start, ends)
            seg_out = self._readout_forward(params, top)
            if len(starts) == 1:
                out = seg_out
                if self.output_size is None and packing is None:
                    # the cache's own states: read-only, so that writing into them cannot
                    # change what backward computes (copy out to modify it)
                    out = out.view()
                    out.flags.writeable = False
            else:
                if out is None:
                    out = np.empty((T, B) + seg_out.shape[2:], dtype=self.dtype)
                out[start:stop] = seg_out
            # A checkpointed segment keeps only its initial states; backward recomputes it.
            segments.append((start, stop, sizes, (inputs, runs, top) if checkpoint is None else initial))
        if packing is not None:
            if self.output_size is not None:
                out[packing.finished] = 0   # the states are zero there; the readout's bias is not
            out = packing.unsort(out)
            state = packing.unsort(final, axis=2)
        self._cache = (x, segments, params, checkpoint is not None, packing)
        return out, self._state_out(state)

    __call__ = forward

    @property
    def _state_count(self):
        """Arrays in a layer's state: (h, c) for an LSTM, h otherwise."""
        return 2 if self.cell == "lstm" else 1

    @property
    def _layers_and_directions(self):
        return self.num_layers * self.num_directions

    def _state_in(self, name, value, B):
        """A public state (h, or (h, c) for an LSTM) as one (S, D·L, B, H) array, or None."""
        if value is None:
            return None
        shape = (self._layers_and_directions, B, self.hidden_size)
        if self.cell == "lstm":
            if not isinstance(value, (tuple, list)) or len(value) != 2:
                raise TypeError(f"{name} of an LSTM must be a pair (h, c) of arrays {shape}, "
                                f"got {type(value).__name__}")
            return np.stack([self._check(f"{name}[{i}]", v, shape) for i, v in enumerate(value)])
        return self._check(name, value, shape)[None].copy()

    def _state_out(self, state):
        return (state[0], state[1]) if self.cell == "lstm" else state[0]

    def _final_state(self, runs, steps=-1, rows=slice(None)):
        """The state (S, D·L, B, H) after every direction's last step; or rows ``rows`` of it
        after steps ``steps`` (one per row), counted from the run's start."""
        return np.stack([np.stack([run[s][steps, rows] for run in runs])
                         for s in range(self._state_count)])

    def _weights(self, params, index):
        k, suffix = divmod(index, self.num_directions)
        suffix = "_reverse" if suffix else ""
        return tuple(params[f"{kind}_l{k}{suffix}"] for kind in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"))

    def _direction_forward(self, params, index, x, state, sizes):
        """One layer, one direction over x (T, B, I) from state (S, B, H), ``sizes`` the
        kernels' batch_sizes; returns its cache, whose first entry holds the states
        (T+1, B, H), h0 first."""
        w_ih, w_hh, b_ih, b_hh = self._weights(params, index)
        kernels = self._kernels
        if self.cell == "lstm":
            return kernels.lstm_forward(x, state[0], state[1], w_ih, w_hh, b_ih, b_hh, sizes)
        if self.cell == "gru":
            return kernels.gru_forward(x, state[0], w_ih, w_hh, b_ih, b_hh, sizes)
        return (kernels.elman_forward(x, state[0], w_ih, w_hh, b_ih, b_hh, self.cell == "relu", sizes),)

    def _direction_backward(self, params, index, d_out, d_state, x, run, clip_step, norms, sizes):
        """Backpropagate one layer, one direction; returns (dx, d_state0 (S, B, H), grads)."""
        w_ih, w_hh, _, _ = self._weights(params, index)
        k, reverse = divmod(index, self.num_directions)
        suffix = f"_l{k}_reverse" if reverse else f"_l{k}"
        kernels = self._kernels
        if self.cell == "lstm":
            dx, dh0, dc0, dw_ih, dw_hh, db = kernels.lstm_backward(
                d_out, d_state[0], d_state[1], x, *run, w_ih, w_hh, clip_step, norms, sizes)
            d_state0, db_ih, db_hh = (dh0, dc0), db, db
        elif self.cell == "gru":
            dx, dh0, dw_ih, dw_hh, db_ih, db_hh = kernels.gru_backward(
                d_out, d_state[0], x, *run, w_ih, w_hh, clip_step, norms, sizes)
            d_state0 = (dh0,)
        else:
            dx, dh0, dw_ih, dw_hh, db = kernels.elman_backward(
                d_out, d_state[0], x, run[0], w_ih, w_hh, self.cell == "relu", clip_step, norms,
                sizes)
            d_state0, db_ih, db_hh = (dh0,), db, db
        grads = {f"weight_ih{suffix}": dw_ih, f"weight_hh{suffix}": dw_hh,
                 f"bias_ih{suffix}": db_ih, f"bias_hh{suffix}": db_hh}
        return dx, d_state0, grads

    def _layers_forward(self, params, x, state, sizes, flip):
        """Run every layer and direction over x (T, B, I) from state (S, D·L, B, H).

        sizes: the kernels' batch_sizes, or None; flip: see :class:`_Packing`, or None.
        Returns (inputs, runs, top): inputs[k] the input of layer k (inputs[0] = x), runs
        each direction's cache in PyTorch's order, top the last layer's output (T, B, D·H).
        """
        D = self.num_directions
        inputs, runs, layer_in = [], [], x
        for k in range(self.num_layers):
            inputs.append(layer_in)
            outs = []
            for d in range(D):
                run = self._direction_forward(
                    params, k * D + d,
                    layer_in if d == 0 else np.ascontiguousarray(_reverse_time(layer_in, flip)),
                    state[:, k * D + d], sizes)
                runs.append(run)
                outs.append(run[0][1:] if d == 0 else _reverse_time(run[0][1:], flip))
            layer_in = outs[0] if D == 1 else np.concatenate(outs, axis=2)
        return inputs, runs, layer_in

    def _readout_forward(self, params, top):
        if self.output_size is None:
            return top
        T, B, F = top.shape
        return self._kernels.linear_forward(
            top.reshape(T * B, F), params["weight_out"], params["bias_out"]).reshape(T, B, self.output_size)

    def backward(self, d_out, d_h_n=None, clip_step=None, step_norms=False):
        """Backpropagate through the last forward call.

        d_out: ∂E/∂out, the shape of forward's ``out``; d_h_n: ∂E/∂h_n shaped like h_n, or None.
        clip_step: clip each sequence's δ_t to this L2 norm at every step, in place, inside
            the backward sweep (so a batch gives the same result as its rows one by one).
        step_norms: when True, ``g.step_norms`` (D·L, T, B) holds ‖∂E/∂h_t‖ of every layer,
            direction, step and sequence (0 past a sequence's end, with lengths).
        Returns :class:`Gradients`. Gradients are taken at the parameters forward ran with.
        """
        if self._cache is None:
            raise RuntimeError("backward() was called before forward(): there is no cache to backpropagate through")
        x, segments, params, checkpointed, packing = self._cache
        T, B, _ = x.shape
        D, H = self.num_directions, self.hidden_size
        clip_step = check_positive_number("clip_step", clip_step)
        out_size = D * H if self.output_size is None else self.output_size
        d_out = self._check("d_out", d_out, (T, B, out_size))
        carry = self._state_in("d_h_n", d_h_n, B)
        if carry is None:
            carry = np.zeros((self._state_count, self._layers_and_directions, B, H), self.dtype)
        flip = None
        if packing is not None:  # forward sorted the batch by length
            d_out = packing.sort(d_out)         # a copy: the caller's d_out is not written
            if self.output_size is not None:
                # outputs past a sequence's end are constants (zero); without a readout the
                # kernels ignore d_out there themselves
                d_out[packing.finished] = 0
            carry = packing.sort(carry, axis=2)
            flip = packing.flip
        norms = None
        if step_norms:
            norms = np.zeros((self._layers_and_directions, T, B), dtype=self.dtype)
        grads = {}
        d_x = None if len(segments) == 1 else np.empty(x.shape, dtype=self.dtype)
        for start, stop, sizes, saved in reversed(segments):
            if checkpointed:
                inputs, runs, top = self._layers_forward(params, x[start:stop], saved, sizes, flip)
            else:
                inputs, runs, top = saved
            d_top = d_out[start:stop]
            if self.output_size is not None:
                n = (stop - start) * B
                d_top, dw, db = self._kernels.linear_backward(
                    d_top.reshape(n, out_size), top.reshape(n, D * H), params["weight_out"])
                d_top = d_top.reshape(stop - start, B, D * H)
                _accumulate(grads, "weight_out", dw)
                _accumulate(grads, "bias_out", db)
            for k in reversed(range(self.num_layers)):
                d_in = None
                for d in range(D):
                    index = k * D + d
                    d_dir = d_top if D == 1 else d_top[:, :, d * H:(d + 1) * H]
                    layer_in = inputs[k]
                    if d:
                        d_dir = _reverse_time(d_dir, flip)
                        layer_in = np.ascontiguousarray(_reverse_time(layer_in, flip))
                    dir_norms = None
                    if norms is not None:
                        dir_norms = np.empty((stop - start, B), self.dtype)
                    dx, carry[:, index], dir_grads = self._direction_backward(
                        params, index, np.ascontiguousarray(d_dir), carry[:, index], layer_in,
                        runs[index], clip_step, dir_norms, sizes)
                    if d:
                        dx = _reverse_time(dx, flip)
                    if norms is not None:
                        norms[index, start:stop] = _reverse_time(dir_norms, flip) if d else dir_norms
                    d_in = dx if d_in is None else d_in + dx
                    for name, value in dir_grads.items():
                        _accumulate(grads, name, value)
                d_top = d_in
            if d_x is None:
                d_x = d_top
            else:
                d_x[start:stop] = d_top
        d_x = np.ascontiguousarray(d_x)
        if packing is not None:
            d_x = packing.unsort(d_x)
            carry = packing.unsort(carry, axis=2)
            if norms is not None:
                norms = packing.unsort(norms, axis=2)
        ordered = {name: grads[name] for name in self.param_shapes()}
        return Gradients(params=ordered, x=d_x, h0=self._state_out(carry), step_norms=norms)

    def cache_nbytes(self):
        """Bytes the forward cache holds for ``backward`` (the input x aside)."""
        if self._cache is None:
            return 0
        _, segments, _, checkpointed, _ = self._cache
        if checkpointed:
            return sum(starts.nbytes for _, _, _, starts in segments)
        owned = []
        for _, _, _, (inputs, runs, top) in segments:
            owned += [a for run in runs for a in run] + [a for a in inputs[1:] if a.base is None]
            if top.base is None and self.num_directions > 1:
                owned.append(top)
        return sum(a.nbytes for a in owned)

    def _state_at(self, t):
        """The state after step t of the last forward (t = 0 is its h0), shaped like h0."""
        cache = self._cache
        if cache is None or cache[3] or cache[4] is not None or self.bidirectional:
            raise RuntimeError("no full, unidirectional, unpacked forward cache to read a state from")
        (_, _, _, (_, runs, _)), = cache[1]
        return self._state_out(np.stack([np.stack([run[s][t] for run in runs])
                                         for s in range(self._state_count)]))

    # ----------------------------------------------------------------- state

    def state_dict(self):
        """A copy of the parameters under PyTorch's names."""
        return {name: value.copy() for name, value in self.params.items()}

    def load_state_dict(self, state_dict):
        """Copy parameters in from a dict of arrays (a torch state_dict's tensors too).

        Every key of the model must be present with its shape; values are converted to the
        model's dtype and copied into the model's own arrays.
        """
        shapes = self.param_shapes()
        names = list(state_dict)
        missing = [k for k in shapes if k not in state_dict]
        extra = [k for k in names if k not in shapes]
        if missing or extra:
            raise ValueError(f"state_dict keys do not match the model: missing {missing}, unexpected {extra}")
        new = {}
        for name, shape in shapes.items():
            value = _to_numpy(state_dict[name])
            if value.shape != shape:
                raise ValueError(f"state_dict[{name!r}] must have shape {shape}, got {value.shape}")
            if not np.issubdtype(value.dtype, np.floating):
                raise TypeError(f"state_dict[{name!r}] must hold floating-point values, got {value.dtype}")
            if not np.isfinite(value).all():
                raise ValueError(f"state_dict[{name!r}] contains NaN or infinite values")
            new[name] = value
        for name, value in new.items():
            target = self.params.get(name)
            if isinstance(target, np.ndarray) and target.shape == value.shape and target.dtype == self.dtype \
                    and target.flags.c_contiguous and target.flags.writeable:
                target[...] = value
            else:
                self.params[name] = np.ascontiguousarray(value, dtype=self.dtype)
        self._cache = None

    def save(self, path):
        """Write the configuration and parameters to ``path`` (a path or a binary file object)
        in NumPy's ``.npz`` format, without pickle; the file name is used as it is."""
        arrays = {f"param/{name}": value for name, value in self._check_params().items()}
        config = dict(self.config, format_version=FORMAT_VERSION)
        config = np.array(json.dumps(config))
        if hasattr(path, "write"):
            np.savez(path, __config__=config, **arrays)
        else:
            with open(path, "wb") as f:  # a file object: np.savez would append ".npz" to a path
                np.savez(f, __config__=config, **arrays)

    # ----------------------------------------------------------------- inference

    def predict(self, x, h0=None, lengths=None):
        """``forward``'s (out, h_n) without keeping a cache: see :func:`fastbptt.inference.predict`."""
        from .inference import predict
        return predict(self, x, h0, lengths)

    def step(self, x_t, state=None):
        """One time step, x_t (B, I) -> (y_t, state): see :func:`fastbptt.inference.step`."""
        from .inference import step
        return step(self, x_t, state)


def load(path, *, backend="auto"):
    """Read a model written by :meth:`RNN.save`; a damaged file raises ValueError."""
    try:
        with np.load(path, allow_pickle=False) as data:
            files = {name: data[name] for name in data.files}
    # zipfile raises NotImplementedError or RuntimeError for headers it cannot read, zlib.error
    # for damaged compressed data; all of them mean a damaged file here.
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile, NotImplementedError,
            RuntimeError, zlib.error) as exc:
        raise ValueError(f"{path!s} is not a readable fastbptt model file: {exc}") from exc
    if "__config__" not in files:
        raise ValueError(f"{path!s} is not a fastbptt model file: it has no configuration")
    try:
        config = json.loads(str(files.pop("__config__")))
        if not isinstance(config, dict):
            raise TypeError(f"a JSON object was expected, got {type(config).__name__}")
        version = config.pop("format_version")
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{path!s} has a damaged configuration: {exc}") from exc
    if version != FORMAT_VERSION:
        raise ValueError(f"{path!s} has format version {version}; this fastbptt reads {FORMAT_VERSION}")
    if set(config) != set(CONFIG_KEYS):
        raise ValueError(f"{path!s} has a damaged configuration: keys {sorted(config)}, "
                         f"expected {sorted(CONFIG_KEYS)}")
    try:
        model = RNN(backend=backend, **config)
    except (TypeError, ValueError, NotImplementedError) as exc:
        raise ValueError(f"{path!s} holds a configuration this fastbptt cannot build: {exc}") from exc
    params = {name[len("param/"):]: value for name, value in files.items() if name.startswith("param/")}
    for name, value in params.items():
        if value.dtype != model.dtype:
            raise ValueError(f"{path!s}: parameter {name!r} has dtype {value.dtype}, expected {model.dtype}")
    model.load_state_dict(params)
    return model


def _reverse_time(a, flip):
    """a (T, B, ...) with each sequence reversed in time: whole (flip None, a view), or
    within its own length, leaving the steps past its end in place (flip from
    :class:`_Packing`, a copy). Either way its own inverse."""
    if flip is None:
        return a[::-1]
    return a[flip, np.arange(a.shape[1])]


def _accumulate(grads, name, value):
    """grads[name] += value; the first value is kept as it is unless another key holds it."""
    if name in grads:
        grads[name] += value
    elif any(value is g for g in grads.values()):
        grads[name] = value.copy()
    else:
        grads[name] = value


def _to_numpy(value):
    """An ndarray from an array-like, a torch tensor included (detached, on the CPU)."""
    if hasattr(value, "detach") and hasattr(value, "cpu"):
        value = value.detach().cpu().numpy()
    return np.asarray(value)


def _orthogonal(n, rng):
    """A random (n, n) orthogonal matrix, uniform over the orthogonal group."""
    q, r = np.linalg.qr(rng.standard_normal((n, n)))
    return q * np.sign(np.diag(r))
