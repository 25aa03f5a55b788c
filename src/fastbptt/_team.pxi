# The thread team's size, chosen per kind of call by timing it: the whole team or one thread.
#
# An OpenMP team meets at every parallel region's end, and a thread that the OS has
# descheduled (another process wants its core) holds every other thread at that meeting
# until it runs again, a time slice later. Measured on 2 cores with one kept busy by another
# process: the tanh (100, 32, 32, 128) training step took 4.4x the one-thread step on 2
# threads, the LSTM (50, 64, 256, 512) 1.8x, where on a quiet machine 2 threads are 1.35-2.1x
# faster than one. No waiting policy is right for both: spinning waits are what a quiet
# machine needs (passive ones cost the tanh step its whole gain from the second thread) and
# what a busy one cannot afford (the spinning thread takes the core its late peer waits for).
#
# So each float32 kernel call runs on the team size that has been the faster for calls of its
# kind (kernel, T, B, I, H, lengths or not): it is timed, and its estimate (an exponentially
# weighted mean) kept in a small table. Now and then a call runs on the other size instead
# (an exploration), so that a machine that becomes busy or quiet again is noticed: a first
# exploration that beats the current estimate by EXPLORE_MARGIN is confirmed by a second
# before the choice moves; each exploration that does not move it doubles the interval to the
# next (up to EXPLORE_MAX_INTERVAL calls), and the interval is long enough besides that losing
# explorations cost at most EXPLORE_BUDGET of the time: on a busy machine a team's call can
# take 30x a one-thread call, on a quiet one a one-thread call 1.3-2x a team's. The results do not depend on the choice: the kernels give the
# same bits on any number of threads.
#
# The choice only caps the team: OMP_NUM_THREADS, threadpoolctl and ``set_num_threads`` set
# the team size as before, and with a team of one there is nothing to choose. The table is
# read and written with the GIL held (at a call's start and end); the cap is per calling
# thread (``fb_cap_threads``). ``FASTBPTT_ADAPTIVE_THREADS=0`` turns the choosing off (the
# whole team always), as ``_adaptive_threads(False)`` does for the tests.
import os as _os

from posix.time cimport CLOCK_MONOTONIC, clock_gettime, timespec

cdef extern from "_step_gemm.h" nogil:
    void fb_cap_threads(int n)
    int fb_team_threads()

DEF TEAM_SLOTS = 128
DEF EXPLORE_FIRST_INTERVAL = 8
DEF EXPLORE_MAX_INTERVAL = 256         # by doubling; more only by EXPLORE_BUDGET
DEF EXPLORE_LONGEST_INTERVAL = 4096
cdef double EXPLORE_BUDGET = 0.02    # of the time, at most, spent in losing explorations
cdef double EXPLORE_MARGIN = 0.92    # an exploration must beat the current estimate by 8 %
cdef double EWMA_WEIGHT = 0.25       # of the newest time in the current choice's estimate

# Kinds of call (a key's first part).
cdef enum:
    TEAM_ELMAN_FORWARD = 1
    TEAM_ELMAN_BACKWARD
    TEAM_LSTM_FORWARD
    TEAM_LSTM_BACKWARD
    TEAM_GRU_FORWARD
    TEAM_GRU_BACKWARD
    TEAM_LINEAR_FORWARD
    TEAM_LINEAR_BACKWARD
    TEAM_UPDATE
    TEAM_LOSS
    TEAM_SCAN

cdef struct TeamEntry:
    unsigned long long key
    double estimate[2]        # seconds per call: [0] the whole team, [1] one thread
    int measured[2]           # how many calls each estimate has seen
    int choice                # 0: the whole team, 1: one thread
    int since                 # calls since the last exploration
    int interval              # calls between explorations
    int confirming            # 1: the last call was a promising exploration
    double first_try          # its time

cdef TeamEntry _team_table[TEAM_SLOTS]
cdef bint _team_adaptive = _os.environ.get("FASTBPTT_ADAPTIVE_THREADS", "1") not in ("0", "")

cdef struct TeamCall:
    int slot                  # the table entry, or -1 when nothing is chosen
    int size                  # which size this call runs on (0 or 1)
    double start


cdef inline double _now() noexcept nogil:
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return ts.tv_sec + ts.tv_nsec * 1e-9


cdef inline unsigned long long _mix(unsigned long long k, unsigned long long v) noexcept nogil:
    k = (k ^ v) * 0xBF58476D1CE4E5B9ULL
    return k ^ (k >> 31)


cdef inline unsigned long long _team_key(int kind, Py_ssize_t a, Py_ssize_t b, Py_ssize_t c,
                                         Py_ssize_t d, bint flag) noexcept nogil:
    cdef unsigned long long k = <unsigned long long> kind * 0x9E3779B97F4A7C15ULL
    k = _mix(_mix(_mix(_mix(_mix(k, a), b), c), d), flag)
    return k | 1          # never 0: 0 marks a free slot


cdef TeamCall team_enter(int kind, Py_ssize_t a, Py_ssize_t b, Py_ssize_t c, Py_ssize_t d,
                         bint flag) noexcept:
    """Choose this call's team size (capping the calling thread's team for it) and start its
    clock. a, b, c, d, flag: the call's sizes (T, B, I, H, lengths given) as its kind has them."""
    cdef TeamCall call
    call.slot = -1
    call.size = 0
    call.start = 0
    if not _team_adaptive or fb_team_threads() < 2:
        return call
    cdef unsigned long long key = _team_key(kind, a, b, c, d, flag)
    cdef int slot = <int> (key % TEAM_SLOTS)
    cdef TeamEntry* e = &_team_table[slot]
    if e.key != key:                      # a new kind of call (or one that took its slot)
        memset(e, 0, sizeof(TeamEntry))
        e.key = key
        e.interval = EXPLORE_FIRST_INTERVAL
    call.slot = slot
    call.size = _team_pick(e)
    if call.size == 1:
        fb_cap_threads(1)
    call.start = _now()
    return call


cdef inline TeamCall layer_call(int kind, a, w_ih, w_hh, batch_sizes):
    """``team_enter`` for a layer's kernel: a is its x or d_out, (T, B, ...)."""
    return team_enter(kind, a.shape[0], a.shape[1], w_ih.shape[1], w_hh.shape[1],
                      batch_sizes is not None)


cdef inline int _next_interval(int interval, double excess) noexcept:
    """Calls until the next exploration, after one that lost by ``excess`` (its extra time
    over the current choice's, relative): twice the last interval, and at least enough calls
    that explorations cost at most EXPLORE_BUDGET of the time (a team meeting a descheduled
    thread can take 30x one thread's time)."""
    cdef double floor = excess / EXPLORE_BUDGET
    interval = min(2 * interval, EXPLORE_MAX_INTERVAL)
    return <int> min(max(<double> interval, floor), <double> EXPLORE_LONGEST_INTERVAL)


cdef void team_leave(TeamCall call) noexcept:
    """Stop the call's clock, lift its cap, and update its kind's estimates and choice."""
    if call.slot < 0:
        return
    cdef double t = _now() - call.start
    fb_cap_threads(0)
    _team_record(&_team_table[call.slot], call.size, t)


cdef int _team_pick(TeamEntry* e) noexcept:
    """The size the next call of e's kind runs on: 0 the whole team, 1 one thread."""
    if e.measured[0] < 2:                 # the first calls: two of each, the team's first
        return 0
    if e.measured[1] < 2:
        return 1
    if e.confirming or e.since >= e.interval:
        return 1 - e.choice               # an exploration
    return e.choice


cdef void _team_record(TeamEntry* e, int s, double t) noexcept:
    """A call of e's kind took t seconds on size s: update the estimates and the choice."""
    cdef int other
    if e.measured[0] < 2 or e.measured[1] < 2:       # the first calls: the faster of two each
        if e.measured[s] == 0:
            e.estimate[s] = t
        elif e.measured[s] == 1:
            e.estimate[s] = t if t < e.estimate[s] else e.estimate[s]
        e.measured[s] += 1
        if e.measured[0] >= 2 and e.measured[1] >= 2:
            e.choice = 0 if e.estimate[0] <= e.estimate[1] else 1
        return
    e.measured[s] += 1
    if s == e.choice:                                 # an ordinary call
        e.estimate[s] += EWMA_WEIGHT * (t - e.estimate[s])
        e.since += 1
        other = 1 - s
        if e.estimate[s] * EXPLORE_MARGIN > e.estimate[other]:   # the current choice slowed
            e.choice = other
            e.since = 0
            e.interval = EXPLORE_FIRST_INTERVAL
        return
    e.since = 0                                       # an exploration of the other size
    if t >= e.estimate[e.choice] * EXPLORE_MARGIN:
        e.confirming = 0
        e.estimate[s] = t
        e.interval = _next_interval(e.interval, t / e.estimate[e.choice] - 1)
    elif not e.confirming:
        e.confirming = 1
        e.first_try = t
    else:                                             # confirmed: the other size is faster
        e.confirming = 0
        e.estimate[s] = t if t > e.first_try else e.first_try
        e.choice = s
        e.interval = EXPLORE_FIRST_INTERVAL


def _adaptive_threads(enabled=None):
    """Whether calls choose their team size by timing (see ``_team.pxi``); with ``enabled``
    given, set it (and forget what was measured). Returns the previous setting."""
    global _team_adaptive
    previous = _team_adaptive
    if enabled is not None:
        _team_adaptive = bool(enabled)
        memset(_team_table, 0, sizeof(_team_table))
    return previous


def _team_replay(team_times, one_times):
    """The sizes the choice takes (0 the whole team, 1 one thread) over simulated calls of one
    kind, call i taking team_times[i] seconds on the team or one_times[i] on one thread: the
    policy without a clock, for the tests."""
    cdef TeamEntry e
    memset(&e, 0, sizeof(TeamEntry))
    e.key = 1
    e.interval = EXPLORE_FIRST_INTERVAL
    sizes = []
    for team, one in zip(team_times, one_times):
        size = _team_pick(&e)
        _team_record(&e, size, team if size == 0 else one)
        sizes.append(size)
    return sizes


def _team_choices():
    """{key: (choice, estimate of the team, estimate of one thread, measured calls)} of the
    kinds of call seen: 0 is the whole team, 1 one thread (for the tests and the bench)."""
    cdef int i
    return {_team_table[i].key: (_team_table[i].choice, _team_table[i].estimate[0],
                                 _team_table[i].estimate[1],
                                 _team_table[i].measured[0] + _team_table[i].measured[1])
            for i in range(TEAM_SLOTS) if _team_table[i].key != 0}
