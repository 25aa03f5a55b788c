"""Optimizers that update ``model.params`` in place: SGD (momentum, Nesterov), Adagrad, Adam.

    opt = fb.optim.Adam(model.params, lr=1e-3)
    g = model.backward(d_out)
    opt.step(g.params)            # every array of model.params is updated in place

Each optimizer keeps its per-parameter state arrays (``opt.state[name]``, PyTorch's buffer
names) from construction on, in the parameter's dtype, and a step allocates no arrays: the
update runs through in-place operators and ``out=`` into scratch buffers that are also
allocated once. Gradients are read, never modified.

``state_dict()`` / ``load_state_dict()`` checkpoint the step count, the hyperparameters and
the state arrays as a flat dict of arrays and scalars that round-trips through ``np.savez``
and ``np.load`` without pickle.
"""
import math

import numpy as np

from ._validation import FLOAT_DTYPES, check_positive_number, shape_str

__all__ = ["Optimizer", "SGD", "Adagrad", "Adam"]


def _check_number(name, value, *, low, high=math.inf, high_open=True):
    """``value`` as a float in [low, high) (or [low, high] when not ``high_open``)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a number, got {value!r}")
    value = float(value)
    inside = low <= value < high if high_open else low <= value <= high
    if not (math.isfinite(value) and inside):
        bracket = ")" if high_open else "]"
        raise ValueError(f"{name} must be a finite number in [{low}, {high}{bracket}, got {value!r}")
    return value


def _check_bool(name, value):
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be a bool, got {value!r}")
    return bool(value)


def _check_params(params):
    """The parameter dict, checked: every value a writeable C-contiguous float32/float64 array."""
    if not isinstance(params, dict):
        raise TypeError(f"params must be a dict of numpy arrays (model.params), got {type(params).__name__}")
    if not params:
        raise ValueError("params is empty: there is nothing to optimize")
    seen = {}
    for name, p in params.items():
        if not isinstance(name, str):
            raise TypeError(f"params keys must be str, got {name!r}")
        if not isinstance(p, np.ndarray):
            raise TypeError(f"params[{name!r}] must be a numpy.ndarray, got {type(p).__name__}")
        if p.dtype not in FLOAT_DTYPES:
            raise TypeError(f"params[{name!r}] must have dtype float32 or float64, got {p.dtype}")
        if p.size == 0:
            raise ValueError(f"params[{name!r}] is empty (shape {shape_str(p.shape)})")
        if not p.flags.c_contiguous:
            raise ValueError(f"params[{name!r}] must be C-contiguous: the optimizer updates it in place")
        if not p.flags.writeable:
            raise ValueError(f"params[{name!r}] is read-only: the optimizer updates it in place")
        # One array under two names would be updated twice per step.
        if id(p) in seen:
            raise ValueError(f"params[{name!r}] is the same array as params[{seen[id(p)]!r}]")
        seen[id(p)] = name
    return params


def _from_checkpoint(value):
    """A Python value from what np.load gives back: 0-d arrays become scalars, arrays lists."""
    if isinstance(value, np.ndarray):
        return value.item() if value.ndim == 0 else value.tolist()
    return value


class Optimizer:
    """What the optimizers share: validation, state and scratch allocation, checkpointing.

    A subclass lists its hyperparameters in ``_hyperparams`` and provides

    * ``_check_hyperparams(**hp) -> dict``: every hyperparameter checked (lr included);
    * ``_state_names(hp)``: the per-parameter state arrays the configuration needs;
    * ``_scratch_count(hp)``: how many parameter-sized scratch arrays one update needs;
    * ``_update(p, g, state, scratch)``: one parameter's update, in place on ``p`` and
      ``state``, temporaries only through ``out=`` into ``scratch``; ``g`` is read-only.

    Attributes
    ----------
    params : dict
        The dict given at construction (``model.params``), read again at every step.
    state : dict[str, dict[str, np.ndarray]]
        ``state[name][buffer]``, each of the shape and dtype of ``params[name]``.
    step_count : int
        Steps taken since construction (or since :meth:`zero_state`).
    """

    _hyperparams = ("lr",)

    def _decayed(self, p, g, scratch):
        """g + weight_decay·p (PyTorch's L2 penalty) in scratch[1]; g itself without decay."""
        if not self.weight_decay:
            return g
        d = scratch[1]
        np.multiply(p, self.weight_decay, out=d)
        d += g
        return d

    def __init__(self, params, **hyperparams):
        self.params = _check_params(params)
        self._set_hyperparams(self._check_hyperparams(**hyperparams))
        self.step_count = 0
        self._specs = {name: (p.shape, p.dtype) for name, p in params.items()}
        hp = self.hyperparams
        self.state = {name: {b: np.zeros_like(p) for b in self._state_names(hp)}
                      for name, p in params.items()}
        self._allocate_scratch()

    # ----------------------------------------------------------------- subclass hooks

    @classmethod
    def _check_hyperparams(cls, *, lr):
        return {"lr": check_positive_number("lr", lr, allow_none=False)}

    @staticmethod
    def _state_names(hp):
        return ()

    @staticmethod
    def _scratch_count(hp):
        return 0

    def _update(self, p, g, state, scratch):
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

    def step(self, grads):
        """Update every parameter in place.

        grads: ``g.params``, a dict with the keys of ``params`` and, under each, an array of
        that parameter's shape and dtype. It is read, never modified.
        """
        pairs = self._check_grads(grads)
        self.step_count += 1
        for name, p, g in pairs:
            # views of the flat scratch buffers: no data is allocated
            scratch = [buf[:p.size].reshape(p.shape) for buf in self._scratch.get(p.dtype, ())]
            self._update(p, g, self.state[name], scratch)

    def zero_state(self):
        """Forget the history: every state array back to zero in place, step count to 0."""
        self.step_count = 0
        for buffers in self.state.values():
            for a in buffers.values():
                a.fill(0)

    def state_dict(self):
        """A checkpoint, as a flat dict of copies.

        Keys: ``"optimizer"`` (the class name), ``"step_count"``, each hyperparameter, and
        ``"<buffer>/<param name>"`` for each state array. It round-trips through
        ``np.savez(path, **opt.state_dict())`` and ``dict(np.load(path))``, without pickle.
        """
        out = {"optimizer": type(self).__name__, "step_count": self.step_count, **self.hyperparams}
        for name, buffers in self.state.items():
            for b, a in buffers.items():
                out[f"{b}/{name}"] = a.copy()
        return out

    def load_state_dict(self, state_dict):
        """Restore a :meth:`state_dict`: hyperparameters, step count and state arrays.

        The arrays are copied into this optimizer's own (which keep their identity), cast
        to their dtype. Everything is checked before anything changes, so a bad checkpoint
        raises and leaves the optimizer as it was.
        """
        if not hasattr(state_dict, "keys"):
            raise TypeError(f"state_dict must be a mapping, got {type(state_dict).__name__}")
        kind = str(np.asarray(state_dict.get("optimizer", "")))
        if kind != type(self).__name__:
            raise ValueError(f"state_dict is from optimizer {kind!r}, not {type(self).__name__}")
        want = {"optimizer", "step_count", *self._hyperparams,
                *(f"{b}/{name}" for name, buffers in self.state.items() for b in buffers)}
        keys = set(state_dict.keys())
        if keys != want:
            raise ValueError(f"state_dict keys do not match this optimizer: missing {sorted(want - keys)}, "
                             f"unexpected {sorted(keys - want)}")
        hp = self._check_hyperparams(**{h: _from_checkpoint(state_dict[h]) for h in self._hyperparams})
        if self._state_names(hp) != self._state_names(self.hyperparams):
            raise ValueError(f"state_dict's hyperparameters {hp} need the state arrays "
                             f"{self._state_names(hp)}, this optimizer has {self._state_names(self.hyperparams)}")
        step_count = _from_checkpoint(state_dict["step_count"])
        if isinstance(step_count, bool) or not isinstance(step_count, int) or step_count < 0:
            raise ValueError(f"state_dict['step_count'] must be a non-negative int, got {step_count!r}")
        copies = []
        for name, buffers in self.state.items():
            for b, a in buffers.items():
                key = f"{b}/{name}"
                value = np.asarray(state_dict[key])
                if value.shape != a.shape:
                    raise ValueError(f"state_dict[{key!r}] must have shape {shape_str(a.shape)}, "
                                     f"got {shape_str(value.shape)}")
                if not np.issubdtype(value.dtype, np.floating) or not np.isfinite(value).all():
                    raise ValueError(f"state_dict[{key!r}] must hold finite floating-point values")
                copies.append((a, value))
        self._set_hyperparams(hp)
        self._allocate_scratch()
        self.step_count = step_count
        for a, value in copies:
            a[...] = value

    def __repr__(self):
        args = ", ".join(f"{h}={v!r}" for h, v in self.hyperparams.items())
        return f"{type(self).__name__}(<{len(self.params)} params>, {args})"

    # ----------------------------------------------------------------- internals

    def _set_hyperparams(self, hp):
        for name, value in hp.items():
            setattr(self, name, value)

    def _allocate_scratch(self):
        # Shared by all parameters of one dtype, as flat buffers the size of the largest
        # one; a step takes views of them. Reallocated only when the configuration changes.
        count = self._scratch_count(self.hyperparams)
        if getattr(self, "_scratch_per_dtype", None) == count:
            return
        self._scratch_per_dtype = count
        self._scratch = {}
        for dtype in {dtype for _, dtype in self._specs.values()}:
            size = max(math.prod(shape) for shape, dt in self._specs.values() if dt == dtype)
            self._scratch[dtype] = [np.empty(size, dtype=dtype) for _ in range(count)]

    def _check_grads(self, grads):
        """[(name, param, grad)] after checking ``grads`` against ``params`` and the state."""
        if not isinstance(grads, dict):
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
            # An array of params may have been replaced since construction (the model's
            # load_state_dict does that when it cannot write in place); the state must fit.
            if not (type(p) is np.ndarray and p.shape == shape and p.dtype == dtype
                    and p.flags.c_contiguous and p.flags.writeable):
                _check_params({name: p})
                raise ValueError(f"params[{name!r}] is now {shape_str(p.shape)} {p.dtype}; the optimizer "
                                 f"was built for {shape_str(shape)} {dtype}")
            if not isinstance(g, np.ndarray):
                raise TypeError(f"grads[{name!r}] must be a numpy.ndarray, got {type(g).__name__}")
            if g.dtype != dtype:
                raise TypeError(f"grads[{name!r}] must have dtype {dtype} like params[{name!r}], got {g.dtype}")
            if g.shape != shape:
                raise ValueError(f"grads[{name!r}] must have shape {shape_str(shape)} like params[{name!r}], "
                                 f"got {shape_str(g.shape)}")
            pairs.append((name, p, g))
        return pairs


class SGD(Optimizer):
    """Stochastic gradient descent with optional momentum (heavy-ball or Nesterov) and
    weight decay, by PyTorch's equations (dampening 0). Per parameter p with gradient g:

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

    State: ``state[name]["momentum_buffer"]`` (b) when momentum > 0.
    """

    _hyperparams = ("lr", "momentum", "nesterov", "weight_decay")

    def __init__(self, params, lr, momentum=0.0, nesterov=False, weight_decay=0.0):
        super().__init__(params, lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay)

    @classmethod
    def _check_hyperparams(cls, *, lr, momentum=0.0, nesterov=False, weight_decay=0.0):
        hp = dict(super()._check_hyperparams(lr=lr),
                  momentum=_check_number("momentum", momentum, low=0.0, high=1.0),
                  nesterov=_check_bool("nesterov", nesterov),
                  weight_decay=_check_number("weight_decay", weight_decay, low=0.0))
        if hp["nesterov"] and hp["momentum"] == 0:
            raise ValueError("nesterov=True needs momentum > 0")
        return hp

    @staticmethod
    def _state_names(hp):
        return ("momentum_buffer",) if hp["momentum"] else ()

    @staticmethod
    def _scratch_count(hp):
        return 2 if hp["weight_decay"] else 1

    def _update(self, p, g, state, scratch):
        t = scratch[0]
        d = self._decayed(p, g, scratch)
        if self.momentum:
            b = state["momentum_buffer"]
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

    State: ``state[name]["sum"]`` (mem), PyTorch's name for it.
    """

    _hyperparams = ("lr", "eps")

    def __init__(self, params, lr=0.1, eps=1e-8):
        super().__init__(params, lr=lr, eps=eps)

    @classmethod
    def _check_hyperparams(cls, *, lr, eps=1e-8):
        return dict(super()._check_hyperparams(lr=lr), eps=check_positive_number("eps", eps, allow_none=False))

    @staticmethod
    def _state_names(hp):
        return ("sum",)

    @staticmethod
    def _scratch_count(hp):
        return 1

    def _update(self, p, g, state, scratch):
        mem, (s,) = state["sum"], scratch
        np.multiply(g, g, out=s)
        mem += s
        np.add(mem, self.eps, out=s)
        np.sqrt(s, out=s)
        np.divide(g, s, out=s)
        s *= self.lr
        p -= s


class Adam(Optimizer):
    """Adam (Kingma & Ba 2015) with bias correction, by PyTorch's equations. At step t:

        d ← g + weight_decay·p                  (L2 penalty in the gradient, not AdamW)
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

    State: ``state[name]["exp_avg"]`` (m) and ``state[name]["exp_avg_sq"]`` (v); the step
    t is ``step_count``.
    """

    _hyperparams = ("lr", "betas", "eps", "weight_decay")

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0):
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)

    @classmethod
    def _check_hyperparams(cls, *, lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0):
        if not isinstance(betas, (tuple, list)) or len(betas) != 2:
            raise TypeError(f"betas must be a pair (beta1, beta2), got {betas!r}")
        return dict(super()._check_hyperparams(lr=lr),
                    betas=tuple(_check_number(f"betas[{i}]", b, low=0.0, high=1.0) for i, b in enumerate(betas)),
                    eps=check_positive_number("eps", eps, allow_none=False),
                    weight_decay=_check_number("weight_decay", weight_decay, low=0.0))

    @staticmethod
    def _state_names(hp):
        return ("exp_avg", "exp_avg_sq")

    @staticmethod
    def _scratch_count(hp):
        return 2 if hp["weight_decay"] else 1

    def _update(self, p, g, state, scratch):
        beta1, beta2 = self.betas
        m, v, s = state["exp_avg"], state["exp_avg_sq"], scratch[0]
        d = self._decayed(p, g, scratch)
        t = self.step_count
        step_size = self.lr / (1.0 - beta1 ** t)
        root_bias2 = math.sqrt(1.0 - beta2 ** t)
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
