"""Pictures of training (optional: needs matplotlib, ``pip install fastbptt[plot]``).

    fig = fb.plot.history(history, path="train.png")              # loss, evaluation, gradient norm
    g = model.backward(d_out, step_norms=True)
    fig = fb.plot.gradient_flow(g.step_norms, path="flow.png")    # ‖∂E/∂s_t‖ over t, log scale

Each function returns the matplotlib Figure, draws into given axes when ``ax``/``axes`` is
passed, and saves a PNG when ``path`` is given. matplotlib is imported on the first call, not
with fastbptt; saving without axes of your own uses the Agg backend, so no display is needed.
"""
import numpy as np

__all__ = ["history", "gradient_flow", "subplots"]


def _pyplot():
    try:
        import matplotlib
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise ImportError("fastbptt.plot needs matplotlib: pip install fastbptt[plot] "
                          f"(or pip install matplotlib); importing it failed: {exc}") from exc
    return matplotlib, plt


def subplots(ncols=1, *, figsize=None):
    """(Figure, list of ``ncols`` Axes side by side), drawn off screen: a Figure not tied to
    pyplot, so that plotting from a script or a test never opens a window nor piles figures
    up. For several pictures in one file: pass the axes to :func:`history` and
    :func:`gradient_flow`, and ``path`` to the last call."""
    _pyplot()
    from matplotlib.figure import Figure
    fig = Figure(figsize=figsize or (6 * ncols, 4.5))
    axes = fig.subplots(1, ncols, squeeze=False)[0]
    return fig, list(axes)


def _save(fig, path, dpi):
    if path is not None:
        fig.tight_layout()
        fig.savefig(path, dpi=dpi, format="png")


def _histories(histories):
    """{label: History} from one History, a list of them or a dict."""
    if isinstance(histories, dict):
        items = dict(histories)
    elif isinstance(histories, (list, tuple)):
        items = {f"run {i}": h for i, h in enumerate(histories)}
    else:
        items = {None: histories}
    for label, h in items.items():
        for name in ("step", "loss", "grad_norm", "eval_step", "eval_loss"):
            if not hasattr(h, name):
                raise TypeError(f"histories must be fb.train.History objects (or a dict or list "
                                f"of them); {label or 'the argument'} has no {name!r}")
    if not items:
        raise ValueError("histories is empty")
    return items


def history(histories, *, path=None, axes=None, title=None, baseline=None, log_loss=True,
            ylabel="loss", dpi=110):
    """Training curves: the loss (thin: each logged batch; thick: the evaluation) and the
    gradient norm before clipping, against the batch index.

    histories: an ``fb.train.History``, a list of them, or a dict label -> History (one
        colour per run).
    path: save the figure there as PNG. axes: two matplotlib Axes to draw into instead of a
        new figure. baseline: a horizontal dashed line on the loss panel (a score to beat).
    Returns the matplotlib Figure.
    """
    items = _histories(histories)
    if axes is None:
        fig, axes = subplots(2)
    else:
        axes = list(axes)
        if len(axes) != 2:
            raise ValueError(f"axes must be two matplotlib Axes (loss, gradient norm), got {len(axes)}")
        fig = axes[0].figure
    ax_loss, ax_norm = axes
    for label, h in items.items():
        line, = ax_loss.plot(h.step, h.loss, lw=0.8, alpha=0.4 if h.eval_loss else 1.0,
                             label=None if h.eval_loss else label)
        colour = line.get_color()
        if h.eval_loss:
            ax_loss.plot(h.eval_step, h.eval_loss, lw=2, color=colour, marker="o", ms=3,
                         label=label if label is not None else "evaluation")
        ax_norm.plot(h.step, h.grad_norm, lw=0.8, color=colour, label=label)
    if baseline is not None:
        ax_loss.axhline(baseline, ls="--", color="gray", label=f"baseline {baseline:.4g}")
    ax_loss.set(xlabel="batch", ylabel=f"{ylabel} (thin: train, thick: evaluation)",
                title=title or "Training loss")
    ax_norm.set(xlabel="batch", ylabel="gradient norm before clipping", yscale="log",
                title="Gradient norm")
    if log_loss and _all_positive(items.values(), baseline):
        ax_loss.set_yscale("log")
    if ax_loss.get_legend_handles_labels()[0]:
        ax_loss.legend()
    if len(items) > 1:
        ax_norm.legend()
    _save(fig, path, dpi)
    return fig


def _all_positive(histories, baseline):
    values = [v for h in histories for v in list(h.loss) + list(h.eval_loss)]
    return bool(values) and min(values) > 0 and (baseline is None or baseline > 0)


def _flow_lines(label, norms):
    """[(label, (T,) mean norm per step)] of one array of step norms."""
    a = np.asarray(norms, dtype=np.float64)
    if a.ndim == 1:
        rows = {label: a}
    elif a.ndim == 2:
        rows = {label: a.mean(axis=1)}
    elif a.ndim == 3:
        if a.shape[0] == 1:
            rows = {label: a[0].mean(axis=1)}
        else:
            prefix = f"{label}, " if label else ""
            rows = {f"{prefix}row {k} (layer·direction)": a[k].mean(axis=1) for k in range(a.shape[0])}
    else:
        raise ValueError(f"step norms must be (D·L, T, B), (T, B) or (T,), got shape {a.shape}")
    if a.size == 0:
        raise ValueError("step norms are empty")
    if not np.isfinite(a).all() or (a < 0).any():
        raise ValueError("step norms must be finite and non-negative")
    return list(rows.items())


def gradient_flow(step_norms, *, path=None, ax=None, title=None, dpi=110):
    """‖∂E/∂s_t‖ against the time step t = 1..T on a log scale: how much of the loss's
    gradient reaches each step (the vanishing-gradient picture), the mean over the batch.

    step_norms: ``g.step_norms`` (D·L, T, B) from ``model.backward(..., step_norms=True)``
        (one line per layer and direction), or (T, B), or (T,) already averaged; or a dict
        label -> any of these, to compare models.
    path: save the figure there as PNG. ax: a matplotlib Axes to draw into.
    Returns the matplotlib Figure. Zeros (a step no gradient reaches) are drawn at the
    bottom of the axis, not dropped.
    """
    items = step_norms.items() if isinstance(step_norms, dict) else [(None, step_norms)]
    lines = [line for label, norms in items for line in _flow_lines(label, norms)]
    if not lines:
        raise ValueError("step_norms is empty")
    if ax is None:
        fig, (ax,) = subplots(1, figsize=(7, 4.5))
    else:
        fig = ax.figure
    positive = [v[v > 0] for _, v in lines]
    floor = min((p.min() for p in positive if p.size), default=1.0) / 10
    for label, values in lines:
        t = np.arange(1, len(values) + 1)
        ax.plot(t, np.maximum(values, floor), lw=2, label=label)
    ax.set_yscale("log")
    ax.set(xlabel="time step t", ylabel="‖∂E/∂s_t‖ (mean over the batch)",
           title=title or "Gradient flow back through time")
    if any(label is not None for label, _ in lines):
        ax.legend()
    _save(fig, path, dpi)
    return fig
