"""Named arrays that are views into one flat buffer: ``model.params`` and ``g.params``.

A :class:`FlatArrays` is a dict (so that every consumer of a dict of arrays keeps working)
whose values are the consecutive views of one contiguous 1-D array, ``flat``, in the dict's
order: each view's ``.base`` is ``flat``, the first starts at its first element, each next
one where the previous ends, the last ends at its end. An optimizer, a clip or an
all-reduce that sees this can run one pass or one call over ``flat`` instead of one per
array.

The keys and the views are fixed for the object's life. Writing into a view in place is the
way to change the values (``params[name][...] = v``, ``params[name] -= lr * g``); assigning
a key (``params[name] = v``, ``update``) copies ``v`` into that key's view after checking
its type, dtype and shape, so that the buffer never silently loses an array; removing a key
is a TypeError.
"""
import functools
import math

import numpy as np

from ._validation import check_array

__all__ = ["FlatArrays"]


class Layout:
    """Where each named array sits in a flat buffer: {name: shape}, in order; computed once so
    that laying a new buffer out (every backward does, for ``g.params``) is cheap."""

    def __init__(self, shapes):
        self.shapes = {name: tuple(shape) for name, shape in shapes.items()}
        self.slots, offset = [], 0
        for name, shape in self.shapes.items():
            n = math.prod(shape)
            self.slots.append((name, offset, offset + n, shape))
            offset += n
        self.size = offset

    @functools.cached_property
    def key(self):
        """(names, shapes) in order: what an optimizer fused over such a buffer compares."""
        return tuple(self.shapes), tuple(self.shapes.values())


class FlatArrays(dict):
    """{name: view} over ``flat`` (1-D, C-contiguous), laid out by ``layout`` (a
    :class:`Layout`, or {name: shape} in order).

    what: how errors name the dict (e.g. "model.params").
    """

    def __init__(self, flat, layout, what="params"):
        if not isinstance(layout, Layout):
            layout = Layout(layout)
        if flat.ndim != 1 or not flat.flags.c_contiguous or flat.size != layout.size:
            raise ValueError(f"{what}: a 1-D contiguous buffer of {layout.size} elements was expected")
        views = {}
        for name, start, stop, shape in layout.slots:
            view = flat[start:stop]
            view.shape = shape  # a view of flat itself (its .base), as reshape would give
            views[name] = view
        super().__init__(views)
        self.flat = flat
        self.what = what
        self._layout = layout
        self._shapes = layout.shapes

    @property
    def shapes(self):
        """{name: shape}, in the buffer's order."""
        return dict(self._shapes)

    def _check(self, name, value):
        if name not in self._shapes:
            raise ValueError(f"{self.what} has no array {name!r} (unexpected key); its keys are "
                             f"fixed: {list(self._shapes)}")
        return check_array(f"{self.what}[{name!r}]", value, self._shapes[name], self.flat.dtype,
                           finite=False)

    def __setitem__(self, name, value):
        """Copy ``value`` (an ndarray of this key's shape and dtype) into the key's view."""
        value = self._check(name, value)
        np.copyto(dict.__getitem__(self, name), value)

    def update(self, *args, **kwargs):
        """Copy every given array into its key's view; nothing is copied if any is wrong."""
        new = dict(*args, **kwargs)
        checked = {name: self._check(name, value) for name, value in new.items()}
        for name, value in checked.items():
            np.copyto(dict.__getitem__(self, name), value)

    def __ior__(self, other):
        self.update(other)
        return self

    def setdefault(self, name, default=None):
        if name not in self:
            self._check(name, default)
        return self[name]

    def _fixed(self, *args, **kwargs):
        raise TypeError(f"{self.what} has fixed keys (views into one buffer); write into the "
                        "arrays instead of removing them")

    __delitem__ = pop = popitem = clear = _fixed

    def copy(self):
        """A plain dict of copies of the arrays."""
        return {name: view.copy() for name, view in self.items()}

    def __reduce__(self):
        # rebuilt around a copy of the buffer (pickle, copy.deepcopy): views cannot be pickled
        # as views, and a rebuilt dict of separate arrays would no longer share one buffer
        return (FlatArrays, (self.flat, self._layout, self.what))
