"""The ``RNN`` class: parameters, validation and layer stacking around the backend kernels.

The model holds its parameters under PyTorch's names and shapes, checks every array before a
kernel sees it, stacks layers on the backend's one-layer functions and keeps the forward cache
for ``backward``. It never knows which backend it runs on.
"""
import json
import zipfile
from dataclasses import dataclass, field

import numpy as np

from . import _backend
from ._validation import (
    as_float_dtype,
    check_array,
    check_positive_int,
    check_positive_number,
)

CELLS = ("tanh", "relu", "lstm", "gru")
INITS = ("default", "identity", "orthogonal")
GATES = {"tanh": 1, "relu": 1, "lstm": 4, "gru": 3}
# Gated cells and bidirectional layers are on their way (see the project's issues); the
# configuration names them already so that the API does not change when they land.
IMPLEMENTED_CELLS = ("tanh", "relu")

FORMAT_VERSION = 1


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
        if cell not in IMPLEMENTED_CELLS:
            raise NotImplementedError(f"cell={cell!r} is not implemented yet; use 'tanh' or 'relu'")
        if init not in INITS:
            raise ValueError(f"init must be one of {INITS}, got {init!r}")
        if not isinstance(bidirectional, (bool, np.bool_)):
            raise TypeError(f"bidirectional must be a bool, got {bidirectional!r}")
        if bidirectional:
            raise NotImplementedError("bidirectional=True is not implemented yet")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, (int, np.integer))):
            raise TypeError(f"seed must be an int or None, got {seed!r}")
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
        return {
            "input_size": self.input_size,
            "hidden_size": self.hidden_size,
            "cell": self.cell,
            "num_layers": self.num_layers,
            "output_size": self.output_size,
            "bidirectional": self.bidirectional,
            "init": self.init,
            "dtype": self.dtype.name,
            "seed": self.seed,
        }

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
        for name, shape in shapes.items():
            a = params[name]
            # The common case in a few attribute reads; check_array words the error otherwise.
            if not (type(a) is np.ndarray and a.dtype == self.dtype and a.shape == shape
                    and a.flags.c_contiguous and all_finite(a)):
                check_array(f"params[{name!r}]", a, shape, self.dtype,
                            finite_check=all_finite, copy_strided=False)
        return dict(params)

    def _check(self, name, a, shape):
        return check_array(name, a, shape, self.dtype, finite_check=self._kernels.all_finite)

    # ----------------------------------------------------------------- forward / backward

    def forward(self, x, h0=None, lengths=None, checkpoint=None):
        """Run the network over a sequence.

        x (T, B, I), time-major; h0 (L, B, H) or None for zeros.
        checkpoint: None keeps every state for ``backward``. An int k keeps only the states
            at every k-th step and recomputes each k-step segment during ``backward``
            (Chen et al. 2016): with k ≈ √T the cache holds about 2√T states instead of T,
            for one more forward pass. The gradients are those of full BPTT.
        Returns (out, h_n): out (T, B, O) with a readout, else the last layer's states
        (T, B, H); h_n (L, B, H), each layer's final state. The cache for ``backward`` is kept.
        """
        if lengths is not None:
            raise NotImplementedError("lengths is not implemented yet; pass padded sequences")
        params = self._check_params()
        x = self._check("x", x, (None, None, self.input_size))
        T, B, _ = x.shape
        L, H = self.num_layers, self.hidden_size
        segment = T if checkpoint is None else check_positive_int("checkpoint", checkpoint)
        if h0 is None:
            h0 = np.zeros((L, B, H), dtype=self.dtype)
        else:
            # a copy: a checkpointed cache keeps these states until backward
            h0 = np.array(self._check("h0", h0, (L, B, H)))
        state = list(h0)
        segments, outs = [], []
        for start in range(0, T, segment):
            stop = min(start + segment, T)
            starts = state
            states = self._layers_forward(params, x[start:stop], starts)
            state = [hs[-1] for hs in states]
            outs.append(self._readout_forward(params, states[-1][1:]))
            # A checkpointed segment keeps only its initial states; backward recomputes it.
            segments.append((start, stop, states if checkpoint is None else starts))
        out = outs[0] if len(outs) == 1 else np.concatenate(outs)
        self._cache = (x, segments, params, checkpoint is not None)
        return out, np.stack(state)

    __call__ = forward

    def _layers_forward(self, params, x, h0):
        """Each layer's states (T+1, B, H) over x (T, B, I) from the initial states h0[k]."""
        relu = self.cell == "relu"
        states, layer_in = [], x
        for k in range(self.num_layers):
            hs = self._kernels.elman_forward(
                layer_in, h0[k], params[f"weight_ih_l{k}"], params[f"weight_hh_l{k}"],
                params[f"bias_ih_l{k}"], params[f"bias_hh_l{k}"], relu)
            states.append(hs)
            layer_in = hs[1:]
        return states

    def _readout_forward(self, params, top):
        if self.output_size is None:
            return top
        T, B, H = top.shape
        return self._kernels.linear_forward(
            top.reshape(T * B, H), params["weight_out"], params["bias_out"]).reshape(T, B, self.output_size)

    def backward(self, d_out, d_h_n=None, clip_step=None, step_norms=False):
        """Backpropagate through the last forward call.

        d_out: ∂E/∂out, the shape of forward's ``out``; d_h_n: ∂E/∂h_n (L, B, H) or None.
        clip_step: clip each sequence's δ_t to this L2 norm at every step, in place, inside
            the backward sweep (so a batch gives the same result as its rows one by one).
        step_norms: when True, ``g.step_norms`` (L, T, B) holds ‖∂E/∂s_t‖ of every step.
        Returns :class:`Gradients`. Gradients are taken at the parameters forward ran with.
        """
        if self._cache is None:
            raise RuntimeError("backward() was called before forward(): there is no cache to backpropagate through")
        x, segments, params, checkpointed = self._cache
        T, B, _ = x.shape
        L, H = self.num_layers, self.hidden_size
        clip_step = check_positive_number("clip_step", clip_step)
        out_size = H if self.output_size is None else self.output_size
        d_out = self._check("d_out", d_out, (T, B, out_size))
        if d_h_n is not None:
            d_h_n = self._check("d_h_n", d_h_n, (L, B, H))
        relu = self.cell == "relu"
        norms = np.empty((L, T, B), dtype=self.dtype) if step_norms else None
        carry = [None if d_h_n is None else d_h_n[k] for k in range(L)]
        grads, dxs = {}, []
        for start, stop, saved in reversed(segments):
            states = self._layers_forward(params, x[start:stop], saved) if checkpointed else saved
            d_top = d_out[start:stop]
            if self.output_size is not None:
                n = (stop - start) * B
                d_top, dw, db = self._kernels.linear_backward(
                    d_top.reshape(n, out_size), states[-1][1:].reshape(n, H), params["weight_out"])
                d_top = d_top.reshape(stop - start, B, H)
                _accumulate(grads, "weight_out", dw)
                _accumulate(grads, "bias_out", db)
            for k in reversed(range(L)):
                layer_in = x[start:stop] if k == 0 else states[k - 1][1:]
                d_top, carry[k], dw_ih, dw_hh, db = self._kernels.elman_backward(
                    d_top, carry[k], layer_in, states[k],
                    params[f"weight_ih_l{k}"], params[f"weight_hh_l{k}"], relu, clip_step,
                    None if norms is None else norms[k, start:stop])
                _accumulate(grads, f"weight_ih_l{k}", dw_ih)
                _accumulate(grads, f"weight_hh_l{k}", dw_hh)
                _accumulate(grads, f"bias_ih_l{k}", db)
                _accumulate(grads, f"bias_hh_l{k}", db)
            dxs.append(d_top)
        dx = dxs[0] if len(dxs) == 1 else np.concatenate(dxs[::-1])
        ordered = {name: grads[name] for name in self.param_shapes()}
        return Gradients(params=ordered, x=dx, h0=np.stack(carry), step_norms=norms)

    def cache_nbytes(self):
        """Bytes the forward cache holds for ``backward`` (the input x aside)."""
        if self._cache is None:
            return 0
        return sum(a.nbytes for _, _, saved in self._cache[1] for a in saved)

    def _state_at(self, t):
        """The state (L, B, H) after step t of the last forward (t = 0 is its h0), a copy."""
        if self._cache is None or self._cache[3]:
            raise RuntimeError("no full (unsegmented) forward cache to read a state from")
        (_, _, states), = self._cache[1]
        return np.stack([hs[t] for hs in states])

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
        """Write the configuration and parameters to an ``.npz`` file (no pickle)."""
        arrays = {f"param/{name}": value for name, value in self._check_params().items()}
        config = dict(self.config, format_version=FORMAT_VERSION)
        np.savez(path, __config__=np.array(json.dumps(config)), **arrays)


def load(path, *, backend="auto"):
    """Read a model written by :meth:`RNN.save`; a damaged file raises ValueError."""
    try:
        with np.load(path, allow_pickle=False) as data:
            files = {name: data[name] for name in data.files}
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile) as exc:
        raise ValueError(f"{path!s} is not a readable fastbptt model file: {exc}") from exc
    if "__config__" not in files:
        raise ValueError(f"{path!s} is not a fastbptt model file: it has no configuration")
    try:
        config = json.loads(str(files.pop("__config__")))
        version = config.pop("format_version")
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{path!s} has a damaged configuration: {exc}") from exc
    if version != FORMAT_VERSION:
        raise ValueError(f"{path!s} has format version {version}; this fastbptt reads {FORMAT_VERSION}")
    model = RNN(backend=backend, **config)
    params = {name[len("param/"):]: value for name, value in files.items() if name.startswith("param/")}
    for name, value in params.items():
        if value.dtype != model.dtype:
            raise ValueError(f"{path!s}: parameter {name!r} has dtype {value.dtype}, expected {model.dtype}")
    model.load_state_dict(params)
    return model


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
