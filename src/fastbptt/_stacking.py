"""Layers stacked on the backend's one-layer functions: L layers of D directions of one cell.

Layer k's input is layer k-1's output, its directions concatenated (forward first); the
reverse direction runs on its input reversed in time (within each sequence's own length when
the batch has lengths). States travel as one (S, D·L, B, H) array: S the cell's state arrays
((h, c) for an LSTM), D·L the directions in PyTorch's order (layer 0 forward, layer 0
reverse, layer 1 forward, ...). The cell's kernels come from the table in ``_cells``; this
module never knows which cell or which backend it runs.
"""
from typing import NamedTuple

import numpy as np

from ._packing import reverse_time

__all__ = ["Stack", "StackRun"]


class StackRun(NamedTuple):
    """What a forward through the stack keeps for its backward (one segment of time).

    inputs: inputs[k] the input (T, B, I_k) of layer k (inputs[0] is the model's x);
    reversed_inputs: inputs[k] reversed in time, contiguous, for layer k's reverse direction
        (made once, in forward), or None for a unidirectional stack;
    runs: each direction's cache from ``Cell.forward``, in PyTorch's order;
    top: the last layer's output (T, B, D·H).
    """

    inputs: list
    reversed_inputs: list
    runs: list
    top: np.ndarray


def param_names(k, reverse):
    """The names of layer k's weights (w_ih, w_hh, b_ih, b_hh) for one direction."""
    suffix = f"_l{k}_reverse" if reverse else f"_l{k}"
    return tuple(f"{kind}{suffix}" for kind in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"))


class Stack:
    """The recurrent layers of a model, on one backend: forward and backward of them all.

    cell: a ``_cells.Cell``; kernels: a backend's module; num_layers L, num_directions D,
    hidden_size H.
    """

    def __init__(self, cell, kernels, num_layers, num_directions, hidden_size):
        self.cell = cell
        self.kernels = kernels
        self.num_layers = num_layers
        self.num_directions = num_directions
        self.hidden_size = hidden_size
        self._name_table = [param_names(*divmod(index, num_directions))
                            for index in range(num_layers * num_directions)]

    @property
    def size(self):
        """D·L, the number of layer directions (and of states)."""
        return self.num_layers * self.num_directions

    def _names(self, index):
        """The names of layer direction ``index``'s weights (w_ih, w_hh, b_ih, b_hh)."""
        return self._name_table[index]

    def forward(self, params, x, state, sizes, flip):
        """Run every layer and direction over x (T, B, I), or ids (T, B) into layer 0, from
        state (S, D·L, B, H).

        sizes: the kernels' batch_sizes, or None; flip: ``Packing.flip``, or None.
        Returns a :class:`StackRun`.
        """
        D, forward = self.num_directions, self.cell.forward
        inputs, reversed_inputs, runs, layer_in = [], [] if D > 1 else None, [], x
        for k in range(self.num_layers):
            inputs.append(layer_in)
            outs = []
            for d in range(D):
                index = k * D + d
                w_ih, w_hh, b_ih, b_hh = (params[name] for name in self._names(index))
                if d:
                    layer_in = np.ascontiguousarray(reverse_time(inputs[k], flip))
                    reversed_inputs.append(layer_in)
                run = forward(self.kernels, layer_in, tuple(state[:, index]), w_ih, w_hh, b_ih, b_hh,
                              sizes)
                runs.append(run)
                outs.append(run[0][1:] if d == 0 else reverse_time(run[0][1:], flip))
            layer_in = outs[0] if D == 1 else np.concatenate(outs, axis=2)
        return StackRun(inputs, reversed_inputs, runs, layer_in)

    def backward(self, params, run, d_top, carry, sizes, flip, clip_step, norms, accumulate,
                 input_grad=True, layer_done=None, outs=None):
        """Backpropagate d_top (T, B, D·H), ∂E/∂top, through every layer of ``run``.

        carry (S, D·L, B, H): ∂E/∂(final states) on entry, ∂E/∂(initial states) on return
        (updated in place). norms: None, or (D·L, T, B) to fill with ‖∂E/∂h_t‖.
        accumulate(name, value) receives every parameter gradient; layer_done(k), when given,
        is called once layer k's (every direction's) have all been given. outs, when given,
        maps every parameter name to the array its gradient is written into (and given to
        accumulate as). Returns ∂E/∂x (T, B, I),
        or None when not ``input_grad`` (the kernels then skip the first layer's dx) or when
        x is ids (T, B).
        """
        D, H, backward = self.num_directions, self.hidden_size, self.cell.backward
        T, B = d_top.shape[:2]
        for k in reversed(range(self.num_layers)):
            d_in = None
            for d in range(D):
                index = k * D + d
                names = self._names(index)
                d_dir = d_top if D == 1 else d_top[:, :, d * H:(d + 1) * H]
                layer_in = run.inputs[k]
                if d:
                    d_dir = reverse_time(d_dir, flip)
                    layer_in = run.reversed_inputs[k]
                dir_norms = None if norms is None else np.empty((T, B), d_top.dtype)
                g = backward(self.kernels, np.ascontiguousarray(d_dir), tuple(carry[:, index]),
                             layer_in, run.runs[index], params[names[0]], params[names[1]],
                             clip_step, dir_norms, sizes, k > 0 or input_grad,
                             None if outs is None else tuple(outs[name] for name in names))
                carry[:, index] = g.d_state0
                if norms is not None:
                    norms[index] = reverse_time(dir_norms, flip) if d else dir_norms
                if g.dx is not None:
                    dx = reverse_time(g.dx, flip) if d else g.dx
                    d_in = dx if d_in is None else d_in + dx
                for name, value in zip(names, (g.dw_ih, g.dw_hh, g.db_ih, g.db_hh)):
                    accumulate(name, value)
            if layer_done is not None:
                layer_done(k)
            d_top = d_in
        return d_top

    def final_state(self, runs, steps=-1, rows=slice(None)):
        """The state (S, D·L, B, H) after every direction's last step; or rows ``rows`` of it
        after steps ``steps`` (one per row), counted from the run's start."""
        first = runs[0][0][steps, rows]
        out = np.empty((self.cell.state_count, len(runs)) + first.shape, first.dtype)
        for s in range(self.cell.state_count):
            for index, run in enumerate(runs):
                out[s, index] = run[s][steps, rows]
        return out
