"""Variable lengths and time reversal: how a batch of sequences of their own lengths runs.

``lengths`` follow PyTorch's PackedSequence semantics on a padded array: the model sorts the
batch longest first (so that the sequences still running at any step are a prefix of the
batch, and the kernels shrink each step's work to that prefix), runs it, and puts the rows
back in the caller's order. The reverse direction of a bidirectional layer reads each
sequence backwards within its own length.
"""
from typing import NamedTuple

import numpy as np

__all__ = ["Packing", "reverse_time"]


class Packing(NamedTuple):
    """How forward ran a batch of variable lengths.

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
        """The packing of checked ``lengths`` (B,) ints in [1, T]."""
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

    def ending_in(self, start, stop):
        """The sorted rows whose sequences end within steps [start, stop)."""
        return np.flatnonzero((self.lengths > start) & (self.lengths <= stop))


def reverse_time(a, flip):
    """a (T, B, ...) with each sequence reversed in time: whole (flip None, a view), or
    within its own length, leaving the steps past its end in place (flip from
    :class:`Packing`, a copy). Either way its own inverse."""
    if flip is None:
        return a[::-1]
    return a[flip, np.arange(a.shape[1])]
