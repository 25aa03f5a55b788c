"""Optimizers that update ``model.params`` in place: SGD (momentum, Nesterov), Adagrad, Adam, AdamW.

    opt = fb.optim.Adam(model.params, lr=1e-3)
    g = model.backward(d_out)
    opt.step(g.params)                   # every array of model.params is updated in place
    norm = opt.step(g.params, clip_norm=1.0)   # the same, after a global-norm clip

Two paths, one result (to rounding):

* fused: when the parameter arrays are the consecutive views of one flat buffer (as
  ``model.params`` are of ``model.flat_params``) and the gradients likewise (``g.params`` of
  ``g.flat``), a step is one compiled pass over the buffers (NumPy's twin without the
  extension), with the clip's scale multiplied into the gradients as they are read;
* per array: any other dict of arrays, one parameter after another, through in-place NumPy
  operators and ``out=`` into scratch buffers allocated once.

The fused path is taken when all of this holds (checked at every step, cheaply):

* ``params`` (the dict given at construction) still holds, under the same keys in the same
  order, the same array objects as when last checked, C-contiguous, writeable, of one
  dtype, each beginning in memory where the one before it ends, all inside the 1-D
  C-contiguous array that owns their memory (their ``.base``; the first array itself when
  it owns its memory);
* ``grads`` has the keys of ``params`` in the same order, and its arrays, of the
  parameters' shapes and dtype, lie end to end inside their own ``.base`` the same way,
  not overlapping the parameters.

Each optimizer keeps its per-parameter state (``opt.state[name][slot]``) from construction
on, in the parameter's dtype: when the parameters share one dtype, each slot is one flat
buffer and ``state[name][slot]`` are views into it, in the parameters' order. Gradients are
read, never modified.

``state_dict()`` / ``load_state_dict()`` checkpoint the mutable state only: ``"step"`` (a 0-d
int64 array) and ``"<slot>/<param name>"`` for each slot array (``m``, ``v``, ``velocity``,
``sum_sq``); the hyperparameters belong to the code that builds the optimizer.
"""
import math
from collections.abc import Mapping
from operator import is_

import numpy as np

from . import _backend, _reference
from ._validation import (check_bool, check_float_array, check_number,
                          check_positive_number, shape_str)

__all__ = ["Optimizer", "SGD", "Adagrad", "Adam", "AdamW"]


def _check_params(params):
    """The parameter dict, checked: every value a writeable C-contiguous float32/float64 array."""
    if not isinstance(params, Mapping):
        raise TypeError(f"params must be a dict of numpy arrays (model.params), got {type(params).__name__}")
    if not params:
        raise ValueError("params is empty: there is nothing to optimize")
    seen = {}
    for name, p in params.items():
        if not isinstance(name, str):
            raise TypeError(f"params keys must be str, got {name!r}")
        check_float_array(f"params[{name!r}]", p, finite=False, copy_strided=False, writeable=True)
        # One array under two names would be updated twice per step.
        if id(p) in seen:
            raise ValueError(f"params[{name!r}] is the same array as params[{seen[id(p)]!r}]")
        seen[id(p)] = name
    return params


def _own_buffer(a):
    """The array whose memory ``a`` views (``a`` itself when it owns its memory)."""
    base = a.base
    return a if base is None else base


def _positive(name, value):
    """value, a positive finite number (``check_positive_number``), checked at no more cost
    than a comparison when it is already a float: the steps take it at every update."""
    if type(value) is float and 0.0 < value < math.inf:
        return value
    return check_positive_number(name, value, allow_none=False)


class Optimizer:
    """What the optimizers share: validation, state and scratch allocation, the choice of
    the fused or the per-array path, checkpointing.

    A subclass lists its hyperparameters in ``_hyperparams`` and provides

    * ``_check_hyperparams(**hp) -> dict``: every hyperparameter checked (lr included);
    * ``_slot_names(hp)``: the per-parameter state arrays the configuration needs;
    * ``_scratch_count(hp)``: how many parameter-sized scratch arrays one update needs;
    * ``_update(p, g, state, scratch)``: one parameter's update, in place on ``p`` and
      ``state``, temporaries only through ``out=`` into ``scratch``; ``g`` is read-only;
    * ``_fused(kernels, p, g, slots, scale)``: the step over the flat buffers ``p`` and ``g``
      (1-D), with ``slots`` {slot: flat state buffer}, by ``kernels``' ``*_step`` function.

    Attributes
    ----------
    params : dict
        The dict given at construction (``model.params``), read again at every step.
    state : dict[str, dict[str, np.ndarray]]
        ``state[name][slot]``, each of the shape and dtype of ``params[name]``.
    step_count : int
        Steps taken since construction (or since :meth:`zero_state`).
    """

    _hyperparams = ("lr",)

    def __init__(self, params, **hyperparams):
        self.params = _check_params(params)
        self._set_hyperparams(self._check_hyperparams(**hyperparams))
        self.step_count = 0
        self._names = tuple(params)
        self._specs = {name: (p.shape, p.dtype) for name, p in params.items()}
        self._shapes = tuple(p.shape for p in params.values())
        self._kernels = _backend._compiled or _reference
        self._allocate_state()
        self._allocate_scratch()
        self._checked_params = None     # the param arrays of the last layout check,
        self._flat_params = None        # the 1-D span of memory they fill, or None,
        self._params_span = None        # and (owner, start, stop) of that span

    # ----------------------------------------------------------------- subclass hooks

    @classmethod
    def _check_hyperparams(cls, *, lr):
        return {"lr": check_positive_number("lr", lr, allow_none=False)}

    @staticmethod
    def _slot_names(hp):
        return ()

    @staticmethod
    def _scratch_count(hp):
        return 0

    def _update(self, p, g, state, scratch):
        raise NotImplementedError

    def _fused(self, kernels, p, g, slots, scale):
        raise NotImplementedError

    # ----------------------------------------------------------------- public

    @property
    def hyperparams(self):
        """{name: value} of the hyperparameters, e.g. {"lr": 0.001, ...}."""
        return {h: getattr(self, h) for h in self._hyperparams}

    @property
    def lr(self):
        """The learning rate; may be set between steps (a schedule); must stay positive."""
        return self._lr

    @lr.setter
    def lr(self, value):
        self._lr = check_positive_number("lr", value, allow_none=False)

    def step(self, grads, *, scale=None, clip_norm=None):
        """Update every parameter in place.

        grads: ``g.params``, a dict with the keys of ``params`` and, under each, an array of
        that parameter's shape and dtype. It is read, never modified.
        scale: a positive number the gradients are multiplied by (a clip computed elsewhere).
        clip_norm: the global-norm clip of :func:`fastbptt.clip_grad_norm`, folded into the
        step: when the joint L2 norm of the gradients exceeds it (and is finite), they enter
        the update scaled by clip_norm / norm.

        Returns the joint norm of the gradients before clipping when ``clip_norm`` is given,
        else None.
        """
        if scale is not None:
            if clip_norm is not None:
                raise ValueError("give scale or clip_norm, not both")
            scale = _positive("scale", scale)
        elif clip_norm is not None:
            clip_norm = _positive("clip_norm", clip_norm)
        flat_p = self._fused_params()
        flat_g = self._fused_grads(grads, flat_p) if flat_p is not None else None
        if flat_g is not None:
            return self._fused_step(flat_p, flat_g, scale, clip_norm)
        return self._step_per_array(grads, scale, clip_norm)

    def _step_flat(self, flat_g, layout, clip_norm=None):
        """``step(FlatArrays(flat_g, ...), clip_norm=clip_norm)`` for gradients in memory of
        their own (a backward's ``g.flat``) laid out by ``layout`` ((names, shapes), in the
        buffer's order), without building and checking the dict: ``model.train_step``'s
        path. NotImplemented (nothing done) unless the step is fused over parameters of that
        same layout."""
        flat_p = self._fused_params()
        if (flat_p is None or layout != (self._names, self._shapes)
                or flat_g.shape != flat_p.shape or flat_g.dtype != flat_p.dtype):
            return NotImplemented
        if clip_norm is not None:
            clip_norm = _positive("clip_norm", clip_norm)
        return self._fused_step(flat_p, flat_g, None, clip_norm)

    def _fused_step(self, flat_p, flat_g, scale, clip_norm):
        """One fused pass over the flat buffers, the clip's scale folded in; returns the norm
        before clipping (clip_norm given) or None."""
        norm = None
        if clip_norm is not None:
            norm = math.sqrt(self._kernels.sum_squares(flat_g))
            scale = clip_norm / norm if math.isfinite(norm) and norm > clip_norm else 1.0
        self.step_count += 1
        self._fused(self._kernels, flat_p, flat_g, self._flat_state, 1.0 if scale is None else scale)
        return norm

    def zero_state(self):
        """Forget the history: every state array back to zero in place, step count to 0."""
        self.step_count = 0
        for slots in self.state.values():
            for a in slots.values():
                a.fill(0)

    def state_dict(self):
        """The mutable state, as a flat dict of array copies.

        ``"step"``: the step count, a 0-d int64 array; ``"<slot>/<param name>"``: each state
        array (e.g. ``"m/weight_ih_l0"``). It round-trips through
        ``np.savez(path, **opt.state_dict())`` and ``dict(np.load(path))``, without pickle.
        """
        out = {"step": np.array(self.step_count, dtype=np.int64)}
        for name, slots in self.state.items():
            for slot, a in slots.items():
                out[f"{slot}/{name}"] = a.copy()
        return out

    def load_state_dict(self, state_dict):
        """Restore a :meth:`state_dict`: the step count and the state arrays.

        The arrays are copied into this optimizer's own (which keep their identity). Keys,
        shapes, dtypes and values are all checked before anything changes, so a bad
        checkpoint raises ValueError naming the key and leaves the optimizer as it was.
        """
        if not isinstance(state_dict, Mapping):
            raise TypeError(f"state_dict must be a mapping, got {type(state_dict).__name__}")
        want = ["step", *(f"{slot}/{name}" for name, slots in self.state.items() for slot in slots)]
        missing = [k for k in want if k not in state_dict]
        unexpected = sorted(str(k) for k in state_dict if k not in set(want))
        if missing or unexpected:
            raise ValueError(f"state_dict keys do not match this {type(self).__name__}: missing {missing}, "
                             f"unexpected {unexpected}")
        step = state_dict["step"]
        if isinstance(step, (bool, np.bool_)) or not isinstance(step, (int, np.integer, np.ndarray)):
            raise ValueError(f"state_dict['step'] must be a 0-d integer array, got {type(step).__name__}")
        step = np.asarray(step)
        if step.shape != () or step.dtype.kind not in "iu" or step < 0:
            raise ValueError(f"state_dict['step'] must be a non-negative 0-d integer array, "
                             f"got {step!r}")
        copies = []
        for name, slots in self.state.items():
            for slot, a in slots.items():
                key = f"{slot}/{name}"
                value = state_dict[key]
                if not isinstance(value, np.ndarray):
                    raise ValueError(f"state_dict[{key!r}] must be a numpy.ndarray, got {type(value).__name__}")
                if value.shape != a.shape:
                    raise ValueError(f"state_dict[{key!r}] must have shape {shape_str(a.shape)}, "
                                     f"got {shape_str(value.shape)}")
                if value.dtype != a.dtype:
                    raise ValueError(f"state_dict[{key!r}] must have dtype {a.dtype}, got {value.dtype}")
                if not np.isfinite(value).all():
                    raise ValueError(f"state_dict[{key!r}] contains NaN or infinite values")
                copies.append((a, value))
        self.step_count = int(step)
        for a, value in copies:
            a[...] = value

    def __repr__(self):
        args = ", ".join(f"{h}={v!r}" for h, v in self.hyperparams.items())
        return f"{type(self).__name__}(<{len(self.params)} params>, {args})"

    # ----------------------------------------------------------------- internals

    def _set_hyperparams(self, hp):
        for name, value in hp.items():
            setattr(self, name, value)

    def _allocate_state(self):
        # One flat buffer per slot when the parameters share a dtype (the fused path needs
        # it), views of it per parameter; otherwise one array per parameter and slot.
        slots = self._slot_names(self.hyperparams)
        dtypes = {dtype for _, dtype in self._specs.values()}
        self._flat_state = None
        if len(dtypes) == 1:
            size = sum(math.prod(shape) for shape, _ in self._specs.values())
            dtype = dtypes.pop()
            self._flat_state = {s: np.zeros(size, dtype=dtype) for s in slots}
            self.state = {name: {} for name in self._names}
            offset = 0
            for name, (shape, _) in self._specs.items():
                n = math.prod(shape)
                for s in slots:
                    self.state[name][s] = self._flat_state[s][offset:offset + n].reshape(shape)
                offset += n
        else:
            self.state = {name: {s: np.zeros(shape, dtype) for s in slots}
                          for name, (shape, dtype) in self._specs.items()}

    def _allocate_scratch(self):
        # Shared by all parameters of one dtype, as flat buffers the size of the largest
        # one; a step takes views of them. The last one holds a scaled gradient.
        count = self._scratch_count(self.hyperparams) + 1
        self._scratch = {}
        for dtype in {dtype for _, dtype in self._specs.values()}:
            size = max(math.prod(shape) for shape, dt in self._specs.values() if dt == dtype)
            self._scratch[dtype] = [np.empty(size, dtype=dtype) for _ in range(count)]

    def _fused_params(self):
        """The 1-D span of memory the parameters fill, or None; the layout is checked again only
        when an array of ``params`` is no longer the one last checked."""
        values = tuple(self.params.values())
        checked = self._checked_params
        if checked is not None and len(values) == len(checked) and all(map(is_, values, checked)):
            return self._flat_params
        flat = span = None
        first = values[0] if values else None
        if (self._flat_state is not None and tuple(self.params) == self._names
                and isinstance(first, np.ndarray) and first.dtype == self._specs[self._names[0]][1]):
            base = _own_buffer(first)
            span = self._kernels.flat_span(values, base, self._shapes)
            if span is not None:
                flat = base if span == (0, base.size) else base[span[0]:span[1]]
                span = (base, *span)
        self._checked_params = values
        self._flat_params = flat
        self._params_span = span
        return flat

    def _fused_grads(self, grads, flat_p):
        """The 1-D span of memory the gradients fill, in the parameters' order, or None."""
        if not (type(grads) is dict or isinstance(grads, Mapping)) or tuple(grads) != self._names:
            return None
        values = tuple(grads.values())
        first = values[0]
        if not isinstance(first, np.ndarray) or first.dtype != flat_p.dtype:
            return None
        base = _own_buffer(first)
        span = self._kernels.flat_span(values, base, self._shapes)
        if span is None:
            return None
        start, stop = span
        owner, p_start, p_stop = self._params_span
        if base is owner and start < p_stop and p_start < stop:
            return None         # the gradients overlap the parameters
        return base if start == 0 and stop == base.size else base[start:stop]

    def _step_per_array(self, grads, scale, clip_norm):
        pairs = self._check_grads(grads)
        norm = None
        if clip_norm is not None:
            norm = math.sqrt(math.fsum(_reference.sum_squares(g) for _, _, g in pairs))
            scale = clip_norm / norm if math.isfinite(norm) and norm > clip_norm else None
        self.step_count += 1
        for name, p, g in pairs:
            # views of the flat scratch buffers: no data is allocated
            scratch = [buf[:p.size].reshape(p.shape) for buf in self._scratch[p.dtype]]
            if scale is not None:
                g = np.multiply(g, scale, out=scratch.pop())
            self._update(p, g, self.state[name], scratch)
        return norm

    def _check_grads(self, grads):
        """[(name, param, grad)] after checking ``grads`` against ``params`` and the state."""
        if not isinstance(grads, Mapping):
            raise TypeError(f"grads must be a dict like g.params, got {type(grads).__name__}")
        params = self.params
        if grads.keys() != params.keys():
            missing = [k for k in params if k not in grads]
            extra = [k for k in grads if k not in params]
            raise ValueError(f"grads keys do not match params: missing {missing}, unexpected {extra}")
        if params.keys() != self._specs.keys():
            raise ValueError("params gained or lost keys since the optimizer was built; build a new optimizer")
        pairs = []
        for name, p in params.items():
            g = grads[name]
            shape, dtype = self._specs[name]
            # An array of params may have been replaced since construction; the state must fit.
            if not (type(p) is np.ndarray and p.shape == shape and p.dtype == dtype
                    and p.flags.c_contiguous and p.flags.writeable):
                check_float_array(f"params[{name!r}]", p, finite=False, copy_strided=False, writeable=True)
                raise ValueError(f"params[{name!r}] must have shape {shape_str(shape)} and dtype {dtype}, "
                                 f"as when the optimizer was built, got {shape_str(p.shape)} {p.dtype}")
            if not isinstance(g, np.ndarray):
                raise TypeError(f"grads[{name!r}] must be a numpy.ndarray, got {type(g).__name__}")
            if g.dtype != dtype:
                raise TypeError(f"grads[{name!r}] must have dtype {dtype} like params[{name!r}], got {g.dtype}")
            if g.shape != shape:
                raise ValueError(f"grads[{name!r}] must have shape {shape_str(shape)} like params[{name!r}], "
                                 f"got {shape_str(g.shape)}")
            pairs.append((name, p, g))
        return pairs

    def _decayed(self, p, g, scratch):
        """g + weight_decay·p (PyTorch's L2 penalty) in scratch[1]; g itself without decay."""
        if not self.weight_decay:
            return g
        d = scratch[1]
        np.multiply(p, self.weight_decay, out=d)
        d += g
        return d


class SGD(Optimizer):
    """Stochastic gradient descent with optional momentum (heavy-ball or Nesterov) and
    weight decay, by PyTorch's equations (torch.optim.SGD, dampening 0). Per parameter p
    with gradient g:

        d ← g + weight_decay·p
        b ← momentum·b + d                      (b starts at 0: b = d at the first step)
        d ← d + momentum·b  if nesterov,  else  d ← b          (when momentum > 0)
        p ← p - lr·d

    Parameters
    ----------
    params : dict of arrays, ``model.params``
    lr : float > 0
    momentum : float in [0, 1)
    nesterov : bool; needs momentum > 0
    weight_decay : float >= 0, the L2 penalty's coefficient

    State: ``state[name]["velocity"]`` (b) when momentum > 0.
    """

    _hyperparams = ("lr", "momentum", "nesterov", "weight_decay")

    def __init__(self, params, lr, momentum=0.0, nesterov=False, weight_decay=0.0):
        super().__init__(params, lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay)

    @classmethod
    def _check_hyperparams(cls, *, lr, momentum=0.0, nesterov=False, weight_decay=0.0):
        hp = dict(super()._check_hyperparams(lr=lr),
                  momentum=check_number("momentum", momentum, low=0.0, high=1.0),
                  nesterov=check_bool("nesterov", nesterov),
                  weight_decay=check_number("weight_decay", weight_decay, low=0.0))
        if hp["nesterov"] and hp["momentum"] == 0:
            raise ValueError("nesterov=True needs momentum > 0")
        return hp

    @staticmethod
    def _slot_names(hp):
        return ("velocity",) if hp["momentum"] else ()

    @staticmethod
    def _scratch_count(hp):
        return 2 if hp["weight_decay"] else 1

    def _update(self, p, g, state, scratch):
        t = scratch[0]
        d = self._decayed(p, g, scratch)
        if self.momentum:
            b = state["velocity"]
            b *= self.momentum
            b += d
            if self.nesterov:
                np.multiply(b, self.momentum, out=t)
                t += d
                d = t
            else:
                d = b
        np.multiply(d, self.lr, out=t)
        p -= t

    def _fused(self, kernels, p, g, slots, scale):
        kernels.sgd_step(p, g, slots.get("velocity"), self._lr, self.momentum, self.nesterov,
                         self.weight_decay, scale)


class Adagrad(Optimizer):
    """Adagrad as in min-char-rnn, with ε inside the square root:

        mem ← mem + g²
        p   ← p - lr·g / √(mem + eps)

    (PyTorch's Adagrad adds eps outside the root, to √mem; the two differ only while
    mem is of the order of eps.)

    Parameters
    ----------
    params : dict of arrays, ``model.params``
    lr : float > 0 (min-char-rnn's 0.1 by default)
    eps : float > 0

    State: ``state[name]["sum_sq"]`` (mem).
    """

    _hyperparams = ("lr", "eps")

    def __init__(self, params, lr=0.1, eps=1e-8):
        super().__init__(params, lr=lr, eps=eps)

    @classmethod
    def _check_hyperparams(cls, *, lr, eps=1e-8):
        return dict(super()._check_hyperparams(lr=lr), eps=check_positive_number("eps", eps, allow_none=False))

    @staticmethod
    def _slot_names(hp):
        return ("sum_sq",)

    @staticmethod
    def _scratch_count(hp):
        return 1

    def _update(self, p, g, state, scratch):
        mem, s = state["sum_sq"], scratch[0]
        np.multiply(g, g, out=s)
        mem += s
        np.add(mem, self.eps, out=s)
        np.sqrt(s, out=s)
        np.divide(g, s, out=s)
        s *= self.lr
        p -= s

    def _fused(self, kernels, p, g, slots, scale):
        kernels.adagrad_step(p, g, slots["sum_sq"], self._lr, self.eps, scale)


class Adam(Optimizer):
    """Adam (Kingma & Ba 2015) with bias correction, by PyTorch's equations
    (torch.optim.Adam). At step t:

        d ← g + weight_decay·p                  (L2 penalty in the gradient; see AdamW)
        m ← β1·m + (1 - β1)·d
        v ← β2·v + (1 - β2)·d²
        p ← p - lr·(m / (1 - β1ᵗ)) / (√(v / (1 - β2ᵗ)) + eps)

    Parameters
    ----------
    params : dict of arrays, ``model.params``
    lr : float > 0
    betas : (β1, β2), each in [0, 1)
    eps : float > 0
    weight_decay : float >= 0

    State: ``state[name]["m"]`` and ``state[name]["v"]``; the step t is ``step_count``.
    """

    _hyperparams = ("lr", "betas", "eps", "weight_decay")
    _decoupled = False

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0):
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)

    @classmethod
    def _check_hyperparams(cls, *, lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0):
        if not isinstance(betas, (tuple, list)) or len(betas) != 2:
            raise TypeError(f"betas must be a pair (beta1, beta2), got {betas!r}")
        return dict(super()._check_hyperparams(lr=lr),
                    betas=tuple(check_number(f"betas[{i}]", b, low=0.0, high=1.0) for i, b in enumerate(betas)),
                    eps=check_positive_number("eps", eps, allow_none=False),
                    weight_decay=check_number("weight_decay", weight_decay, low=0.0))

    @staticmethod
    def _slot_names(hp):
        return ("m", "v")

    @staticmethod
    def _scratch_count(hp):
        return 2 if hp["weight_decay"] else 1

    def _update(self, p, g, state, scratch):
        beta1, beta2 = self.betas
        m, v, s = state["m"], state["v"], scratch[0]
        if self._decoupled:
            if self.weight_decay:
                p *= 1.0 - self._lr * self.weight_decay
            d = g
        else:
            d = self._decayed(p, g, scratch)
        t = self.step_count
        step_size = self._lr / (1.0 - beta1 ** t)
        root_bias2 = (1.0 - beta2 ** t) ** 0.5
        # m ← β1·m + (1 - β1)·d
        np.multiply(d, 1.0 - beta1, out=s)
        m *= beta1
        m += s
        # v ← β2·v + (1 - β2)·d²
        np.multiply(d, d, out=s)
        s *= 1.0 - beta2
        v *= beta2
        v += s
        # p ← p - step_size · m / (√v / √(1 - β2ᵗ) + eps), PyTorch's order of operations
        np.sqrt(v, out=s)
        s /= root_bias2
        s += self.eps
        np.divide(m, s, out=s)
        s *= step_size
        p -= s

    def _fused(self, kernels, p, g, slots, scale):
        beta1, beta2 = self.betas
        kernels.adam_step(p, g, slots["m"], slots["v"], self._lr, beta1, beta2, self.eps,
                          self.weight_decay, self._decoupled, self.step_count, scale)


class AdamW(Adam):
    """Adam with decoupled weight decay (Loshchilov & Hutter 2019), as torch.optim.AdamW:
    the parameters shrink by lr·weight_decay, then take Adam's step on the gradient alone.

        p ← p·(1 - lr·weight_decay)
        m ← β1·m + (1 - β1)·g;   v ← β2·v + (1 - β2)·g²
        p ← p - lr·(m / (1 - β1ᵗ)) / (√(v / (1 - β2ᵗ)) + eps)

    Parameters as :class:`Adam`, with PyTorch's default weight_decay 0.01.
    """

    _decoupled = True

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2):
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)

    @staticmethod
    def _scratch_count(hp):
        return 1
