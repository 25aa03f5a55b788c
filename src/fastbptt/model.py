"""The ``RNN`` class: parameters, validation and the forward/backward of the whole network.

The model holds its parameters under PyTorch's names and shapes, checks every array before a
kernel sees it, runs the recurrent layers through ``_stacking`` (on the cell's kernels from
the table in ``_cells``), the optional linear readout itself, and keeps the forward cache
for ``backward``. Variable lengths and time reversal live in ``_packing``, files in
``serialization``, the flat buffers that ``params`` and ``g.params`` are views of in
``_flat``. It never knows which backend it runs on.
"""
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import NamedTuple, Optional

import numpy as np

from . import _backend, _cells, serialization
from . import losses as _losses
from ._flat import FlatArrays, Layout
from ._packing import Packing
from ._stacking import Stack, StackRun
from ._validation import (
    as_float_dtype,
    check_array,
    check_bool,
    check_choice,
    check_float_values,
    check_keys,
    check_lengths,
    check_positive_int,
    check_positive_number,
    check_seed,
    shape_str,
)

CELLS = tuple(_cells.CELLS)
INITS = ("default", "identity", "orthogonal")

CONFIG_KEYS = ("input_size", "hidden_size", "cell", "num_layers", "output_size",
               "bidirectional", "init", "dtype", "seed", "embedding_size")
EMBEDDING = "embedding.weight"  # torch.nn.Embedding's parameter, under nn.Module's name for it
FORMAT_VERSION = serialization.FORMAT_VERSION
load = serialization.load


@dataclass
class Gradients:
    """What :meth:`RNN.backward` returns. D = 2 when bidirectional, else 1; L the layers.

    params: dict with the same keys, order and shapes as ``model.params``; its arrays are
        the consecutive views of ``flat`` (a ``FlatArrays``, like ``model.params``).
    flat: (P,) every parameter's gradient in one array, in ``model.param_shapes()`` order,
        laid out as ``model.flat_params``.
    x: (T, B, I), the gradient with respect to the input sequence; None when backward was
        called with ``input_grad=False``, or when x was ids.
    h0: (D·L, B, H), the gradient with respect to the initial state; for an LSTM a pair
        (h, c) of such arrays, like ``h0``.
    step_norms: (D·L, T, B) ‖∂E/∂h_t‖ of each layer and direction, step and sequence, when
        asked for (else None).
    """

    params: dict
    x: Optional[np.ndarray]
    h0: object
    step_norms: np.ndarray = field(default=None, repr=False)
    flat: np.ndarray = field(default=None, repr=False)


class _Segment(NamedTuple):
    """One stretch [start, stop) of time of a forward. batch_sizes: the kernels' (or None);
    run: the stack's :class:`StackRun` when every state is kept, else None; initial: the
    states (S, D·L, B, H) at ``start`` when checkpointed (backward reruns it), else None."""

    start: int
    stop: int
    batch_sizes: Optional[np.ndarray]
    run: Optional[StackRun]
    initial: Optional[np.ndarray]


class _ForwardCache(NamedTuple):
    """What forward keeps for backward: x, layer 0's input ((T, B, I) floats, (T, B) ids, or
    the embedded ids (T, B, E)), sorted longest first when ``packing`` is given; the segments;
    the parameters forward ran with; the packing (None without lengths); ids (T, B), sorted
    as x, when an embedding made x from them, else None."""

    x: np.ndarray
    segments: list
    params: dict
    packing: Optional[Packing]
    ids: Optional[np.ndarray] = None

    @property
    def checkpointed(self):
        return self.segments[0].run is None


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
    embedding_size : int or None
        When given (E), PyTorch's ``nn.Embedding(input_size, E)`` runs before the layers:
        parameter ``embedding.weight`` (input_size, E), initialised N(0, 1) as torch's, first
        in ``param_shapes()``; layer 0's W_ih is then (G·H, E) and x must be ids (T, B).

    Attributes
    ----------
    params : dict of arrays
        PyTorch's names and shapes (see :meth:`param_shapes`), in that order; the arrays are
        the consecutive views of ``flat_params``. Write into them in place to change the
        parameters (an optimizer does). Assigning a key, ``params[name] = a``, copies ``a``
        (an ndarray of that key's shape and the model's dtype) into the key's view, and
        assigning ``model.params = d`` copies every array of ``d`` in: the arrays stay views
        of the one buffer. Keys cannot be removed.
    flat_params : (P,) array
        Every parameter in one contiguous array, in ``param_shapes()`` order.
    """

    #: forward, predict and step take integer ids (T, B) as the one-hot sequence
    accepts_ids = True

    def __init__(self, input_size, hidden_size, *, cell="tanh", num_layers=1, output_size=None,
                 bidirectional=False, init="default", dtype="float32", seed=None, backend="auto",
                 embedding_size=None):
        self.input_size = check_positive_int("input_size", input_size)
        self.hidden_size = check_positive_int("hidden_size", hidden_size)
        self.num_layers = check_positive_int("num_layers", num_layers)
        self.output_size = None if output_size is None else check_positive_int("output_size", output_size)
        self.cell = check_choice("cell", cell, CELLS)
        self.init = check_choice("init", init, INITS)
        self.bidirectional = check_bool("bidirectional", bidirectional)
        self.dtype = as_float_dtype(dtype)
        self.seed = check_seed("seed", seed)
        self.embedding_size = (None if embedding_size is None
                               else check_positive_int("embedding_size", embedding_size))
        self.backend, self._kernels = _backend.resolve(backend)
        self._cell = _cells.CELLS[self.cell]
        self._stack = Stack(self._cell, self._kernels, self.num_layers, self.num_directions,
                            self.hidden_size)
        self._cache = None
        self._layout = Layout(self._param_layout())
        self._shapes = self._layout.shapes
        size = self._layout.size
        self._params = FlatArrays(np.empty(size, self.dtype), self._layout, "model.params")
        # What forward runs on and backward takes the gradients at: a copy of the parameters
        # made by every forward, into this buffer allocated once (see _params_for_cache).
        self._snapshot = FlatArrays(np.empty(size, self.dtype), self._layout, "the forward's parameters")
        self._params.update(self._initial_params(np.random.default_rng(self.seed)))

    # ----------------------------------------------------------------- configuration

    @property
    def num_directions(self):
        return 2 if self.bidirectional else 1

    @property
    def config(self):
        """The constructor's arguments, enough to rebuild the model (``backend`` aside)."""
        return {key: self.dtype.name if key == "dtype" else getattr(self, key) for key in CONFIG_KEYS}

    def __getstate__(self):
        # copy.deepcopy and pickle: the backend's module is named, not copied, and the cache
        # is left behind (it holds views of the snapshot buffer, which a copy would detach)
        state = dict(self.__dict__, _cache=None)
        del state["_kernels"], state["_stack"], state["_cell"]
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._cell = _cells.CELLS[self.cell]
        self._kernels = _backend.resolve(self.backend)[1]
        self._stack = Stack(self._cell, self._kernels, self.num_layers, self.num_directions,
                            self.hidden_size)

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.config.items())
        return f"RNN({args}, backend={self.backend!r})"

    @property
    def params(self):
        return self._params

    @params.setter
    def params(self, value):
        if not isinstance(value, Mapping):
            raise TypeError(f"model.params must be a dict of arrays, got {type(value).__name__}")
        check_keys("model.params", value, self._shapes, "the model")
        if value is not self._params:
            self._params.update(value)

    @property
    def flat_params(self):
        """(P,): every parameter in one contiguous array (``params`` are views into it)."""
        return self._params.flat

    def param_shapes(self):
        """{name: shape} of every parameter, in PyTorch's order (that of ``flat_params``)."""
        return dict(self._shapes)

    def _param_layout(self):
        G, H = self._cell.gates, self.hidden_size
        shapes = {}
        first_in = self.input_size
        if self.embedding_size is not None:
            shapes[EMBEDDING] = (self.input_size, self.embedding_size)
            first_in = self.embedding_size
        for k in range(self.num_layers):
            I_k = first_in if k == 0 else H * self.num_directions
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
            elif name == EMBEDDING:
                value = rng.standard_normal(shape)   # nn.Embedding's default, whatever init
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

    def all_finite(self, a):
        """True when no element of the array ``a`` is NaN or infinite (a compiled scan on the
        compiled backend)."""
        return self._kernels.all_finite(a)

    def _checked_params(self):
        """model.params after one finiteness scan of the whole buffer (their keys, shapes,
        dtype and layout cannot change); a non-finite value raises naming its key."""
        all_finite = self._kernels.all_finite
        params = self._params
        if not all_finite(params.flat):
            bad = next(name for name, a in params.items() if not all_finite(a))
            raise ValueError(f"model.params[{bad!r}] contains NaN or infinite values")
        return params

    def _params_for_cache(self):
        """The parameters as forward runs them and backward takes the gradients at: a copy
        into the snapshot buffer (one memcpy, no allocation), since anything may write
        model.params in place between forward and backward (an optimizer step, a user's
        ``params[k] -= ...``) and the gradients belong to the parameters forward ran with.
        The previous forward's cache, which held the snapshot, is dropped first."""
        self._cache = None
        np.copyto(self._snapshot.flat, self._params.flat)
        return self._snapshot

    def _check(self, name, a, shape):
        return check_array(name, a, shape, self.dtype, finite_check=self._kernels.all_finite)

    def _check_input(self, name, x, shape):
        """x as the layers take it: floats of ``shape`` ((T, B, I) or (B, I)) checked, or
        integer ids of ``shape[:-1]`` in [0, input_size) as a C-contiguous intp copy (then
        True beside it). A model with an embedding takes ids only."""
        if _is_integer_array(x) and x.ndim == len(shape) - 1:
            return check_ids(name, x, shape[:-1], self.input_size), True
        ids_words = f"integer ids {_shape_words(shape[:-1])} in [0, {self.input_size})"
        if self.embedding_size is not None:
            kind = f"{x.dtype} of shape {x.shape}" if isinstance(x, np.ndarray) else type(x).__name__
            raise TypeError(f"{name} of a model with an embedding must be {ids_words}, got {kind}")
        if isinstance(x, np.ndarray) and x.dtype.kind in "iub":
            raise TypeError(f"{name} must have dtype {self.dtype} (floats {_shape_words(shape)}) or "
                            f"be {ids_words}, got {x.dtype} of shape {x.shape}")
        if isinstance(x, np.ndarray) and x.ndim == len(shape) - 1:
            raise ValueError(f"{name} must have shape {_shape_words(shape)} (floats) or be "
                             f"{ids_words}, got {x.dtype} of shape {x.shape}")
        return self._check(name, x, shape), False

    def _embed(self, params, ids):
        """Layer 0's input from ids (T, B): the embedding's rows (T, B, E), or the ids
        themselves without an embedding."""
        if self.embedding_size is None:
            return ids
        return np.take(params[EMBEDDING], ids, axis=0)

    # ----------------------------------------------------------------- states

    def _state_in(self, name, value, B):
        """A public state (h, or (h, c) for an LSTM) as one (S, D·L, B, H) array, or None."""
        if value is None:
            return None
        shape = (self._stack.size, B, self.hidden_size)
        count = self._cell.state_count
        if count == 1:
            return self._check(name, value, shape)[None].copy()
        if not isinstance(value, (tuple, list)) or len(value) != count:
            pair = ", ".join(self._cell.states)
            raise TypeError(f"{name} of an {self.cell.upper()} must be a pair ({pair}) of arrays "
                            f"{shape}, got {type(value).__name__}")
        return np.stack([self._check(f"{name}[{i}]", v, shape) for i, v in enumerate(value)])

    def _state_out(self, state):
        """The (S, D·L, B, H) state as the public API gives it: an array, or a tuple of S."""
        return state[0] if self._cell.state_count == 1 else tuple(state)

    def _zero_state(self, B):
        return np.zeros((self._cell.state_count, self._stack.size, B, self.hidden_size), self.dtype)

    # ----------------------------------------------------------------- forward / backward

    def forward(self, x, h0=None, lengths=None, checkpoint=None, _snapshot=True):
        """Run the network over a sequence.

        x (T, B, I) floats, time-major, or (T, B) integer ids in [0, input_size), which mean
            the one-hot sequence np.eye(input_size)[x] (the same outputs and gradients) without
            building it: layer 0 gathers columns of W_ih, or the embedding's rows when the
            model has one (then x must be ids). Of any integer dtype, strided or not (converted to
            a contiguous intp copy when it is not one). h0: the initial states (D·L, B, H), or None for zeros; for
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

        _snapshot (private, for ``train_step``): False runs on ``model.params`` themselves, not
        on a copy, when the caller guarantees that nothing writes them before ``backward``.
        """
        self._checked_params()
        x, ids = self._check_input("x", x, (None, None, self.input_size))
        T, B = x.shape[:2]
        if checkpoint is None:
            segment = T
        else:
            segment = check_positive_int("checkpoint", checkpoint)
            if self.bidirectional:
                raise ValueError("checkpoint is not supported with bidirectional=True: the "
                                 "reverse direction needs the whole sequence at once")
        state = self._state_in("h0", h0, B)
        if state is None:
            state = self._zero_state(B)
        packing = flip = None
        if lengths is not None:
            packing = Packing.of(check_lengths(lengths, T, B), T)
            x = packing.sort(x)
            state = packing.sort(state, axis=2)
            final = np.empty_like(state)
            flip = packing.flip
        # the inputs are all checked: the run starts here
        if _snapshot:
            params = self._params_for_cache()
        else:
            self._cache = None
            params = self._params
        tokens = x if ids and self.embedding_size is not None else None
        if ids:
            x = self._embed(params, x)
        starts = range(0, T, segment)
        segments, out = [], None
        for start in starts:
            stop = min(start + segment, T)
            sizes = None if packing is None else packing.batch_sizes[start:stop]
            initial = state
            run = self._stack.forward(params, x[start:stop], state, sizes, flip)
            state = self._stack.final_state(run.runs)
            if packing is not None:
                # The kernels zero a finished sequence's states: its h_n is its state at its
                # own last step, taken in the segment where it ends.
                ends = packing.ending_in(start, stop)
                final[:, :, ends] = self._stack.final_state(run.runs, packing.lengths[ends] - start, ends)
            seg_out = self._readout_forward(params, run.top)
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
            if checkpoint is None:
                segments.append(_Segment(start, stop, sizes, run, None))
            else:
                segments.append(_Segment(start, stop, sizes, None, initial))
        if packing is not None:
            if self.output_size is not None:
                out[packing.finished] = 0   # the states are zero there; the readout's bias is not
            out = packing.unsort(out)
            state = packing.unsort(final, axis=2)
        self._cache = _ForwardCache(x, segments, params, packing, tokens)
        return out, self._state_out(state)

    __call__ = forward

    def _readout_forward(self, params, top):
        if self.output_size is None:
            return top
        T, B, F = top.shape
        return self._kernels.linear_forward(
            top.reshape(T * B, F), params["weight_out"], params["bias_out"]).reshape(T, B, self.output_size)

    def backward(self, d_out, d_h_n=None, clip_step=None, step_norms=False, input_grad=True,
                 _on_final=None, _d_out_checked=False, _flat_only=False):
        """Backpropagate through the last forward call.

        d_out: ∂E/∂out, the shape of forward's ``out``; d_h_n: ∂E/∂h_n shaped like h_n, or None.
        clip_step: clip each sequence's δ_t to this L2 norm at every step, in place, inside
            the backward sweep (so a batch gives the same result as its rows one by one).
        step_norms: when True, ``g.step_norms`` (D·L, T, B) holds ‖∂E/∂h_t‖ of every layer,
            direction, step and sequence (0 past a sequence's end, with lengths).
        input_grad: False leaves out ∂E/∂x (``g.x`` is None; the kernels skip its product),
            which training never needs. Ids have no ∂E/∂x: ``g.x`` is None for them.
        Returns :class:`Gradients`. Gradients are taken at the parameters forward ran with,
        whatever was written into ``model.params`` since.

        _on_final (private, for ``distributed``): called as ``_on_final(flat, start, stop)``
        each time ``flat[start:stop]`` holds final gradients, while backward goes on below:
        the readout's, then each layer's (its directions adjacent in ``flat``), top first;
        ``flat`` is the buffer ``g.flat`` will be. The embedding's and anything not yet
        given are final when backward returns. _d_out_checked (private, for ``train_step``):
        d_out is a loss's own C-contiguous gradient of the model's dtype and shape;
        _flat_only (private, for ``train_step``): return ``g.flat`` alone.
        """
        cache = self._cache
        if cache is None:
            raise RuntimeError("backward() was called before forward(): there is no cache to backpropagate through")
        x, params, packing = cache.x, cache.params, cache.packing
        T, B = x.shape[:2]
        D, H = self.num_directions, self.hidden_size
        clip_step = check_positive_number("clip_step", clip_step)
        embedded = cache.ids is not None
        input_grad = check_bool("input_grad", input_grad) and x.ndim == 3 and not embedded
        # the embedding's gradient is made of layer 0's dx, which the caller never sees
        want_dx = input_grad or embedded
        out_size = D * H if self.output_size is None else self.output_size
        if not _d_out_checked:
            d_out = self._check("d_out", d_out, (T, B, out_size))
        carry = self._state_in("d_h_n", d_h_n, B)
        if carry is None:
            carry = self._zero_state(B)
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
            norms = np.zeros((self._stack.size, T, B), dtype=self.dtype)
        grads = {}

        def accumulate(name, value):
            # the kernels' arrays are their own (never one array for two names): summing into
            # the first is safe, and the sums run in the same order however they are laid out
            if name in grads:
                grads[name] += value
            else:
                grads[name] = value

        # The gradients go into their slots of one buffer, laid out as flat_params. Over one
        # segment each is one kernel's output, which the kernels write into its slot itself
        # (``outs``: views of flat; a 10,000-word model's 13M gradients are 52 MB that would
        # be copied otherwise); over several (truncated checkpointing) they are summed first
        # and copied in as soon as final (in the last segment swept, the first in time). The
        # readout's are final first, then each layer's, top first, so that _on_final can
        # start reducing them early.
        flat = self._kernels.empty(self._layout.size, self.dtype)
        slots = {name: (start, stop) for name, start, stop, _ in self._layout.slots}
        outs = None
        if len(cache.segments) == 1:
            outs = {name: flat[start:stop].reshape(self._shapes[name])
                    for name, (start, stop) in slots.items() if name != EMBEDDING}
        copied = set() if outs is None else set(outs)     # the names flat already holds

        def final(names):
            names = [name for name in names if name in grads]
            if _on_final is None or not names:
                return
            for name in names:
                if name not in copied:
                    start, stop = slots[name]
                    flat[start:stop] = grads[name].reshape(-1)
                    copied.add(name)
            _on_final(flat, min(slots[n][0] for n in names), max(slots[n][1] for n in names))

        def layer_done(k):
            final([name for d in range(D) for name in self._stack._names(k * D + d)])

        d_x = None
        if want_dx and len(cache.segments) > 1:
            d_x = np.empty(x.shape, dtype=self.dtype)
        for seg in reversed(cache.segments):
            start, stop = seg.start, seg.stop
            run = seg.run
            if run is None:
                run = self._stack.forward(params, x[start:stop], seg.initial, seg.batch_sizes, flip)
            d_top = d_out[start:stop]
            if self.output_size is not None:
                n = (stop - start) * B
                d_top, dw, db = self._kernels.linear_backward(
                    d_top.reshape(n, out_size), run.top.reshape(n, D * H), params["weight_out"],
                    None if outs is None else (outs["weight_out"], outs["bias_out"]))
                d_top = d_top.reshape(stop - start, B, D * H)
                accumulate("weight_out", dw)
                accumulate("bias_out", db)
            last = _on_final is not None and seg is cache.segments[0]
            if last:
                final(("weight_out", "bias_out"))
            d_top = self._stack.backward(params, run, d_top, carry, seg.batch_sizes, flip, clip_step,
                                         None if norms is None else norms[:, start:stop], accumulate,
                                         want_dx, layer_done if last else None, outs)
            if want_dx and d_x is None:
                d_x = d_top
            elif want_dx:
                d_x[start:stop] = d_top
        if want_dx:
            d_x = np.ascontiguousarray(d_x)
        if embedded:
            grads[EMBEDDING] = _embedding_gradient(cache.ids, d_x, self.input_size)
            d_x = None
        if packing is not None:
            if input_grad:
                d_x = packing.unsort(d_x)
            carry = packing.unsort(carry, axis=2)
            if norms is not None:
                norms = packing.unsort(norms, axis=2)
        if not copied:      # every gradient summed over segments: one concatenation
            np.concatenate([grads[name].reshape(-1) for name in self._shapes], out=flat)
        else:
            for name in self._shapes:
                if name not in copied:
                    start, stop = slots[name]
                    flat[start:stop] = grads[name].reshape(-1)
        if _flat_only:
            return flat
        params = FlatArrays(flat, self._layout, "g.params")
        return Gradients(params=params, x=d_x, h0=self._state_out(carry), step_norms=norms, flat=flat)

    def train_step(self, x, target, *, loss, optimizer, clip_norm=None, last_step=False,
                   h0=None, lengths=None):
        """One training update in one call: forward, the loss, backward and the optimizer's
        step with the global-norm clip folded in.

        x, h0, lengths: as ``forward``'s; target: as the loss wants it (see ``fb.losses``).
        loss: "mse", "cross_entropy", or a callable ``(out, target, last_step=[, lengths=])
            -> (loss, d_out)``; optimizer: an ``fb.optim`` optimizer over ``model.params``;
            clip_norm: None, or the max joint L2 norm of the gradients (``optimizer.step``'s).
        Returns (loss, norm): the batch's loss as a float, and the joint norm of the gradients
        before clipping (None without ``clip_norm``).

        The parameters end as ``forward``, the loss, ``backward(d_out, input_grad=False)``
        and ``optimizer.step(g.params, clip_norm=clip_norm)`` in turn would leave them, to the
        bit; faster, since nothing can write the parameters between this forward and its
        backward: the forward runs on ``model.params`` itself (no snapshot), d_out is the
        loss's own and is not checked again. No cache is left: ``backward`` after it raises.
        """
        loss_fn = _losses.resolve(loss)
        out, _ = self.forward(x, h0, lengths, _snapshot=False)
        try:
            value, d_out = loss_fn(out, target, last_step=last_step,
                                   **_losses.with_lengths(lengths))
            flat = self.backward(d_out, input_grad=False,
                                 _d_out_checked=loss_fn in _losses.LOSSES.values(),
                                 _flat_only=True)
        finally:
            self._cache = None    # its parameters are the live ones, about to change
        return float(value), self._optimizer_step(optimizer, flat, clip_norm)

    def _optimizer_step(self, optimizer, flat, clip_norm):
        """``optimizer.step(g.params, clip_norm=clip_norm)`` for ``flat``, gradients laid out as
        ``flat_params`` (backward's ``g.flat``): an fb.optim optimizer fused over model.params
        takes them as they are, without the dict being built and checked; any other gets the
        dict. Returns the step's result (the norm before clipping, or None)."""
        step_flat = getattr(optimizer, "_step_flat", None)
        norm = (step_flat(flat, self._layout.key, clip_norm) if step_flat is not None
                else NotImplemented)
        if norm is NotImplemented:
            norm = optimizer.step(FlatArrays(flat, self._layout, "g.params"), clip_norm=clip_norm)
        return norm

    def cache_nbytes(self):
        """Bytes the forward cache holds for ``backward`` (the input x aside)."""
        cache = self._cache
        if cache is None:
            return 0
        if cache.checkpointed:
            return sum(seg.initial.nbytes for seg in cache.segments)
        owned = []
        for seg in cache.segments:
            run = seg.run
            owned += [a for r in run.runs for a in r] + [a for a in run.inputs[1:] if a.base is None]
            owned += run.reversed_inputs or []
            if run.top.base is None and self.num_directions > 1:
                owned.append(run.top)
        return sum(a.nbytes for a in owned)

    def state_at(self, t):
        """The state after step t of the last forward (t = 0 is its h0), shaped like h0.

        Only from a forward that kept every state (no ``checkpoint``), without ``lengths``,
        of a unidirectional model: the truncated-BPTT loop of ``fb.train.fit`` restarts a
        window from there.
        """
        cache = self._cache
        if cache is None or cache.checkpointed or cache.packing is not None or self.bidirectional:
            raise RuntimeError("no full, unidirectional, unpacked forward cache to read a state from")
        T = cache.x.shape[0]
        if isinstance(t, (bool, np.bool_)) or not isinstance(t, (int, np.integer)) or not 0 <= t <= T:
            raise ValueError(f"t must be an int in [0, {T}] (the last forward's steps), got {t!r}")
        seg, = cache.segments
        return self._state_out(self._stack.final_state(seg.run.runs, t))

    # ----------------------------------------------------------------- state

    def state_dict(self):
        """A copy of the parameters under PyTorch's names."""
        return {name: value.copy() for name, value in self.params.items()}

    def load_state_dict(self, state_dict):
        """Copy parameters in from a dict of arrays (a torch state_dict's tensors too).

        Every key of the model must be present with its shape; values are converted to the
        model's dtype and copied into the model's own arrays. Nothing changes when any entry
        is wrong.
        """
        shapes = self._shapes
        check_keys("state_dict", state_dict, shapes, "the model")
        new = {name: check_float_values(f"state_dict[{name!r}]", _to_numpy(state_dict[name]), shape)
               for name, shape in shapes.items()}
        for name, value in new.items():
            dict.__getitem__(self._params, name)[...] = value  # converted to the model's dtype
        self._cache = None

    def save(self, path):
        """Write the configuration and parameters to ``path`` (a path or a binary file object)
        in NumPy's ``.npz`` format, without pickle; the file name is used as it is. See
        ``fastbptt.serialization``."""
        serialization.save(self, path)

    # ----------------------------------------------------------------- inference

    def predict(self, x, h0=None, lengths=None):
        """``forward``'s (out, h_n) without keeping a cache: see :func:`fastbptt.inference.predict`."""
        from .inference import predict
        return predict(self, x, h0, lengths)

    def step(self, x_t, state=None):
        """One time step, x_t (B, I) or ids (B,) -> (y_t, state): see :func:`fastbptt.inference.step`."""
        from .inference import step
        return step(self, x_t, state)


def _is_integer_array(x):
    return isinstance(x, np.ndarray) and x.dtype.kind in "iu"


def _shape_words(shape):
    """(*, *, 65) for (None, None, 65): check_array's way of writing a wanted shape."""
    return shape_str("*" if e is None else e for e in shape)


def check_ids(name, x, shape, size):
    """Integer ids x of ``shape`` (entries None for any size) in [0, size), as a C-contiguous
    intp array (a copy when x is of another dtype or strided: the caller's array is never
    written). Anything else is a TypeError/ValueError naming ``name``."""
    if not _is_integer_array(x):
        kind = x.dtype if isinstance(x, np.ndarray) else type(x).__name__
        raise TypeError(f"{name} must be integer ids {_shape_words(shape)} in [0, {size}), got {kind}")
    if x.ndim != len(shape) or any(e is not None and e != s for e, s in zip(shape, x.shape)):
        raise ValueError(f"{name} of ids must have shape {_shape_words(shape)}, got {x.shape}")
    if x.size == 0:
        raise ValueError(f"{name} must not be empty, got shape {x.shape}")
    ids = np.ascontiguousarray(x, dtype=np.intp)   # the caller's x itself when it is one
    # one pass: read as unsigned, a negative id is larger than any size (and a uint64 id
    # past intp's range, which the cast wrapped, is read back as itself)
    if ids.view(np.uintp).max() >= size:
        low, high = x.min(), x.max()
        bad = low if low < 0 else high
        raise ValueError(f"{name} holds id {int(bad)}, outside [0, {size}) (input_size {size})")
    return ids


def _embedding_gradient(ids, d_x, size):
    """∂E/∂(embedding.weight) (V, E): the rows of d_x (T, B, E) summed into the rows their ids
    (T, B) picked, in the ids' order, so that the sums' bits never depend on threads."""
    grad = np.zeros((size, d_x.shape[-1]), dtype=d_x.dtype)
    np.add.at(grad, ids.reshape(-1), d_x.reshape(-1, d_x.shape[-1]))
    return grad


def _to_numpy(value):
    """An ndarray from an array-like, a torch tensor included (detached, on the CPU)."""
    if hasattr(value, "detach") and hasattr(value, "cpu"):
        value = value.detach().cpu().numpy()
    return np.asarray(value)


def _orthogonal(n, rng):
    """A random (n, n) orthogonal matrix, uniform over the orthogonal group."""
    q, r = np.linalg.qr(rng.standard_normal((n, n)))
    return q * np.sign(np.diag(r))
