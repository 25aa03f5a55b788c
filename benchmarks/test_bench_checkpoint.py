"""Checkpointed BPTT (Chen et al. 2016) against full BPTT on long sequences.

A training step (forward + backward) of a tanh layer, float32, compiled kernels, at
T = 1,000 and 10,000 with checkpoints every k = √T steps. Beside the time, each benchmark
records the bytes its forward cache held for backward (``model.cache_nbytes()``): the
full cache is T+1 states, the checkpointed one T/k of them (plus one k-step segment that
backward recomputes at a time, freed as it goes).

    python -m pytest benchmarks/test_bench_checkpoint.py -p no:cacheprovider \\
        --benchmark-columns=median,iqr,rounds --benchmark-group-by=group
"""
import math

import numpy as np
import pytest

import fastbptt as fb

B, I, H = 16, 32, 128


@pytest.mark.parametrize("T", [1_000, 10_000])
@pytest.mark.parametrize("mode", ["full", "checkpointed"])
def test_long_sequence_step(benchmark, T, mode):
    rng = np.random.default_rng(0)
    model = fb.RNN(I, H, seed=0)
    x = rng.standard_normal((T, B, I)).astype(np.float32)
    d_out = (rng.standard_normal((T, B, H)) * 0.01).astype(np.float32)
    k = math.isqrt(T) if mode == "checkpointed" else None

    def step():
        model.forward(x, checkpoint=k)
        model.backward(d_out)

    benchmark.group = f"T={T}"
    model.forward(x, checkpoint=k)
    state_bytes = B * H * 4
    benchmark.extra_info.update(
        checkpoint=k, cache_bytes=model.cache_nbytes(),
        cache_fraction=model.cache_nbytes() / ((T + 1) * state_bytes),
        peak_cache_fraction=(model.cache_nbytes() + ((k or T) + 1) * state_bytes * (k is not None))
        / ((T + 1) * state_bytes))
    benchmark.pedantic(step, rounds=3 if T > 1000 else 10, warmup_rounds=1)
