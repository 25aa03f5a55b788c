# Work arrays that stay resident between calls.
#
# A training step allocates the same large arrays at every call: the forward's cache (states,
# gates), the backward's δ's, the packed weights. NumPy takes each from malloc, and glibc
# serves blocks this large with fresh mmap'd pages, or trims the heap when they are freed,
# so every step faulted its few MB in again (a page fault and the page's zeroing for every
# 4 KB: the LSTM (100, 16, 2, 100) update went from 1.7 to 3.4 ms, the GRU at
# (100, 32, 32, 128) from 3.8 to 6.4 ms when an unrelated change moved where the arrays fall
# in the heap). Here a freed array's memory goes back to a small pool and the next array of
# that size takes it, pages already mapped.
#
# ``pooled_empty(shape, dtype)`` gives an ordinary writable C-contiguous NumPy array whose
# base is a ``_Block``; when the last view of the block dies, its memory returns to the pool
# instead of to malloc. The pool keeps at most POOL_BYTES of idle memory (the oldest idle
# block goes first), blocks smaller than POOL_MIN_BYTES stay with malloc (glibc's heap
# serves those without faults), and live blocks are reported to tracemalloc in NumPy's
# domain, as NumPy's own arrays are, so memory measurements see what is in use.
# All of it runs with the GIL held (allocation in the kernels' Python part, release in the
# block's deallocation).
from libc.stdint cimport uintptr_t
from libc.stdlib cimport free
from libc.string cimport memmove

cdef extern from "<stdlib.h>" nogil:
    void* aligned_alloc(size_t alignment, size_t size)

cdef extern from "Python.h":
    int PyTraceMalloc_Track(unsigned int domain, uintptr_t ptr, size_t size)
    int PyTraceMalloc_Untrack(unsigned int domain, uintptr_t ptr)

DEF POOL_SLOTS = 32
cdef Py_ssize_t POOL_MIN_BYTES = 128 * 1024
cdef Py_ssize_t POOL_BYTES = 256 * 1024 * 1024
cdef unsigned int NUMPY_TRACE_DOMAIN = 389047  # numpy.lib.tracemalloc_domain

# The idle blocks, oldest first: their memory and sizes (rounded up to whole pages).
cdef void* _idle_data[POOL_SLOTS]
cdef Py_ssize_t _idle_size[POOL_SLOTS]
cdef Py_ssize_t _idle_count = 0
cdef Py_ssize_t _idle_bytes = 0


cdef void _drop_idle(Py_ssize_t i) noexcept:
    """Remove idle block i from the pool (its memory is the caller's now)."""
    global _idle_count, _idle_bytes
    _idle_bytes -= _idle_size[i]
    _idle_count -= 1
    memmove(&_idle_data[i], &_idle_data[i + 1], (_idle_count - i) * sizeof(void*))
    memmove(&_idle_size[i], &_idle_size[i + 1], (_idle_count - i) * sizeof(Py_ssize_t))


cdef void _give_back(void* data, Py_ssize_t size) noexcept:
    """A block's memory, no longer in use: keep it idle, making room by freeing the oldest."""
    global _idle_count, _idle_bytes
    if size > POOL_BYTES:
        free(data)
        return
    while _idle_count == POOL_SLOTS or _idle_bytes + size > POOL_BYTES:
        free(_idle_data[0])
        _drop_idle(0)
    _idle_data[_idle_count] = data
    _idle_size[_idle_count] = size
    _idle_count += 1
    _idle_bytes += size


cdef void* _take(Py_ssize_t size) noexcept:
    """Memory for a block of size bytes: the smallest idle block that fits without wasting
    more than half of it, else fresh page-aligned memory (NULL if there is none)."""
    cdef Py_ssize_t i, best = -1
    cdef void* data
    for i in range(_idle_count):
        if size <= _idle_size[i] <= 2 * size and (best < 0 or _idle_size[i] < _idle_size[best]):
            best = i
    if best < 0:
        return aligned_alloc(4096, size)
    data = _idle_data[best]
    _drop_idle(best)
    return data


cdef class _Block:
    """Memory from the pool, exported through the buffer protocol (NumPy arrays view it)."""
    cdef void* data
    cdef Py_ssize_t size      # the memory's size (what returns to the pool)
    cdef Py_ssize_t nbytes    # what the array asked for
    cdef Py_ssize_t shape[1]

    def __dealloc__(self):
        if self.data != NULL:
            PyTraceMalloc_Untrack(NUMPY_TRACE_DOMAIN, <uintptr_t> self.data)
            _give_back(self.data, self.size)

    def __getbuffer__(self, Py_buffer* view, int flags):
        self.shape[0] = self.nbytes
        view.buf = self.data
        view.obj = self
        view.len = self.nbytes
        view.readonly = 0
        view.itemsize = 1
        view.format = "B"
        view.ndim = 1
        view.shape = self.shape
        view.strides = NULL
        view.suboffsets = NULL
        view.internal = NULL

    def __releasebuffer__(self, Py_buffer* view):
        pass


cdef object pooled_empty(shape, dtype):
    """np.empty(shape, dtype), C order, its memory from the pool when it is large."""
    dtype = np.dtype(dtype)
    cdef Py_ssize_t count = 1, n
    if isinstance(shape, int):
        shape = (shape,)
    for n in shape:
        count *= n
    cdef Py_ssize_t nbytes = count * dtype.itemsize
    if nbytes < POOL_MIN_BYTES:
        return np.empty(shape, dtype=dtype)
    cdef _Block block = _Block.__new__(_Block)
    cdef Py_ssize_t size = (nbytes + 4095) & ~4095
    block.data = _take(size)
    if block.data == NULL:
        raise MemoryError(f"cannot allocate {nbytes} bytes for an array of shape {shape}")
    block.size = size
    block.nbytes = nbytes
    PyTraceMalloc_Track(NUMPY_TRACE_DOMAIN, <uintptr_t> block.data, size)
    return np.frombuffer(block, dtype=dtype, count=count).reshape(shape)


cdef object pooled_zeros(shape, dtype):
    """np.zeros(shape, dtype), C order, its memory from the pool when it is large."""
    out = pooled_empty(shape, dtype)
    out.fill(0)
    return out


def empty(shape, dtype):
    """np.empty(shape, dtype) in C order, its memory from the pool when it is large: for the
    arrays the model makes at every step (backward's flat gradients, 33 MB at H = 1024, which
    NumPy maps fresh and the kernel zeroes page by page at every call)."""
    return pooled_empty(shape, dtype)


def _pool_state():
    """(idle blocks, idle bytes) of the pool: for the tests."""
    return _idle_count, _idle_bytes
