"""Checking a model's backward pass against central finite differences, in float64."""
import numpy as np

from . import _cells
from ._validation import check_positive_int

__all__ = ["GradcheckError", "gradcheck"]


class GradcheckError(AssertionError):
    """The analytic gradients of ``backward`` disagree with finite differences."""


def gradcheck(model, x, h0=None, *, lengths=None, eps=1e-6, rtol=1e-5, atol=1e-8, max_checks=16,
              seed=0):
    """Compare ``model.backward`` with central differences of a random scalar loss.

    The check runs on a float64 copy of ``model`` (same class, configuration, parameters and
    backend), so ``model`` itself is not touched. The loss is E = Σ out ⊙ R + Σ h_n ⊙ S with
    seeded random R and S, so every output and every final state carries gradient (for an
    LSTM, h0 and h_n are (h, c) pairs); ``lengths`` is passed on to ``forward``. For each
    parameter, for x and for h0, up to ``max_checks`` seeded random entries are perturbed by
    ±eps. Returns the largest error found relative to the tolerance (≤ 1 passes); raises
    :class:`GradcheckError` naming every entry where
    |analytic - numeric| > atol + rtol·|numeric|.
    """
    max_checks = check_positive_int("max_checks", max_checks)
    rng = np.random.default_rng(seed)
    twin = type(model)(**dict(model.config, dtype="float64"), backend=model.backend)
    twin.load_state_dict(model.params)
    x = np.asarray(x, dtype=np.float64).copy()
    L, H = twin.num_layers * twin.num_directions, twin.hidden_size
    # The state as a list of arrays: [h] or, for an LSTM, [h, c]; the public API's form is
    # the array itself for a state of one array, else a tuple.
    names = _cells.CELLS[twin.cell].states
    single = len(names) == 1
    if h0 is None:
        state = [np.zeros((L, x.shape[1], H)) for _ in names]
    else:
        state = [np.asarray(a, dtype=np.float64).copy() for a in ([h0] if single else h0)]

    def as_h0(parts=state):
        return parts[0] if single else tuple(parts)

    def as_list(h):
        return [h] if single else list(h)

    out, h_n = twin.forward(x, as_h0(), lengths=lengths)
    r_out = rng.standard_normal(out.shape)
    r_h = [rng.standard_normal(a.shape) for a in as_list(h_n)]
    g = twin.backward(r_out, as_h0(r_h))

    def loss():
        o, h = twin.forward(x, as_h0(), lengths=lengths)
        return float(np.sum(o * r_out) + sum(np.sum(a * r) for a, r in zip(as_list(h), r_h)))

    targets = [(f"params[{name!r}]", twin.params[name], g.params[name]) for name in twin.params]
    targets.append(("x", x, g.x))
    labels = ["h0"] if single else [f"h0[{i}]" for i in range(len(names))]
    targets += [(label, a, da) for label, a, da in zip(labels, state, as_list(g.h0))]
    failures, worst = [], 0.0
    for label, array, analytic in targets:
        flat = array.reshape(-1)
        picks = rng.choice(flat.size, size=min(max_checks, flat.size), replace=False)
        for i in picks:
            saved = flat[i]
            flat[i] = saved + eps
            up = loss()
            flat[i] = saved - eps
            down = loss()
            flat[i] = saved
            numeric = (up - down) / (2 * eps)
            exact = analytic.reshape(-1)[i]
            err = abs(exact - numeric) / (atol + rtol * abs(numeric))
            worst = max(worst, err)
            if err > 1:
                index = np.unravel_index(i, array.shape)
                failures.append(f"{label}[{', '.join(map(str, index))}]: backward {exact:.10g}, "
                                f"finite differences {numeric:.10g}")
    if failures:
        raise GradcheckError("backward disagrees with finite differences at:\n  " + "\n  ".join(failures))
    return worst
