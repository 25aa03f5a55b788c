"""Soak: a long training run, watching resident memory and the time per update.

    python benchmarks/soak.py --updates 20000     # the full soak (minutes; a quiet machine)
    python benchmarks/soak.py --updates 500       # a quick smoke run

The adding problem (T=100, B=16) on an IRNN (H=100), Adam (lr 3e-4, as the demo),
clip_norm 1.0, trained by ``fb.train.fit`` in slices of ``--every`` updates with one
optimizer throughout. After each slice: the resident set size (RSS, from /proc/self/statm,
or the peak from getrusage where there is no /proc) and the mean time per update of that
slice. The verdict, after the
warm-up slices: RSS grows by at most 5 % (a leak of a few arrays per update would grow it by
far more over 20,000 updates), and the median time per update of the last third of the
slices is within 10 % of the first third's (a cache, a history or a pool that grows would
slow the updates down as the run goes on).

This is a script, not a pytest-benchmark: it measures one long run, not a repeated call.
"""
import argparse
import os
import resource
import statistics
import sys
import time

import numpy as np

import fastbptt as fb
from fastbptt.train import fit

RSS_GROWTH_LIMIT = 0.05   # the fraction of the post-warm-up RSS allowed to be added
TIME_DRIFT_LIMIT = 0.10   # late slices' median time per update over the early slices', minus 1


def rss_bytes():
    """The resident set size of this process now (Linux), else its peak so far."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak if sys.platform == "darwin" else peak * 1024  # bytes on macOS, KiB elsewhere


def _batches(T, B, seed, dtype):
    rng = np.random.default_rng(seed)
    while True:
        yield fb.tasks.adding_problem(T, B, seed=rng, dtype=dtype)


def soak(updates=20000, *, every=None, warmup=None, T=100, B=16, H=100, lr=3e-4, seed=0,
         backend="auto", out=None):
    """Train ``updates`` updates and report memory and time per slice of ``every`` updates.

    every: the slice length (default: 1000, or a tenth of ``updates`` when that is fewer);
    warmup: updates before the baseline of the verdict (default: the first fifth, at least
    one slice). out: a callable given each line of the report as it is made (None: silent).
    Returns a dict: "config" (the run's settings), "rows" (one dict per slice: "updates" so
    far, "rss_mib", "ms_per_update", "loss" of the slice's last batch), "rss_growth"
    (fraction), "time_drift" (fraction), and "verdict" (dict of bools: "memory_flat",
    "time_flat", "passed").
    """
    if updates < 1:
        raise ValueError(f"updates must be a positive int, got {updates!r}")
    every = every or min(1000, max(1, updates // 10))
    slices = -(-updates // every)
    warm_slices = max(1, (warmup if warmup is not None else updates // 5) // every)
    warm_slices = min(warm_slices, slices - 1) if slices > 1 else 0
    say = out or (lambda line: None)
    model = fb.RNN(2, H, cell="relu", init="identity", output_size=1, seed=seed, backend=backend)
    optimizer = fb.optim.Adam(model.params, lr=lr)
    stream = _batches(T, B, seed, model.dtype)
    config = dict(updates=updates, every=every, warmup=warm_slices * every, T=T, B=B, H=H, lr=lr,
                  cell="irnn", optimizer="Adam", clip_norm=1.0, backend=model.backend,
                  describe=fb._backend.describe())
    say(f"soak: {config['describe']}")
    say(f"soak: adding problem T={T} B={B}, IRNN H={H}, Adam lr={lr}, clip 1.0: {updates} updates, "
        f"a row every {every}, warm-up {config['warmup']}")
    say(f"{'updates':>8} {'RSS MiB':>9} {'ms/update':>10} {'loss':>9}")
    rows, done = [], 0
    while done < updates:
        n = min(every, updates - done)
        started = time.perf_counter()
        history = fit(model, stream, steps=n, optimizer=optimizer, loss="mse", last_step=True,
                      clip_norm=1.0, progress=False, log_every=n)
        seconds = time.perf_counter() - started
        done += n
        row = dict(updates=done, rss_mib=rss_bytes() / 2**20, ms_per_update=1e3 * seconds / n,
                   loss=float(history.loss[-1]))
        rows.append(row)
        say(f"{row['updates']:>8} {row['rss_mib']:>9.1f} {row['ms_per_update']:>10.3f} {row['loss']:>9.4f}")
    after = rows[warm_slices:]
    base = after[0]["rss_mib"]
    rss_growth = (max(r["rss_mib"] for r in after) - base) / base
    third = max(1, len(after) // 3)
    early = statistics.median(r["ms_per_update"] for r in after[:third])
    late = statistics.median(r["ms_per_update"] for r in after[-third:])
    time_drift = late / early - 1.0
    verdict = dict(memory_flat=bool(rss_growth <= RSS_GROWTH_LIMIT),
                   time_flat=bool(time_drift <= TIME_DRIFT_LIMIT))
    verdict["passed"] = verdict["memory_flat"] and verdict["time_flat"]
    say(f"soak: RSS growth after warm-up {100 * rss_growth:+.2f} % (limit {100 * RSS_GROWTH_LIMIT:.0f} %): "
        f"{'flat' if verdict['memory_flat'] else 'GROWING'}")
    say(f"soak: time per update, last third over first third {100 * time_drift:+.1f} % "
        f"(limit {100 * TIME_DRIFT_LIMIT:.0f} %): {'flat' if verdict['time_flat'] else 'SLOWING'}")
    say(f"soak: {'PASSED' if verdict['passed'] else 'FAILED'}")
    return dict(config=config, rows=rows, rss_growth=rss_growth, time_drift=time_drift, verdict=verdict)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--updates", type=int, default=20000, help="updates in all (default 20000)")
    parser.add_argument("--every", type=int, default=None, help="updates per report row")
    parser.add_argument("--warmup", type=int, default=None, help="updates before the baseline")
    parser.add_argument("--backend", default="auto", choices=("auto", "cython", "numpy"))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    report = soak(args.updates, every=args.every, warmup=args.warmup, backend=args.backend,
                  seed=args.seed, out=print)
    return 0 if report["verdict"]["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
