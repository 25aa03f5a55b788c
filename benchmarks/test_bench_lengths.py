"""Variable-length batches against the padded batch they came from.

The same training step as test_bench_cells.py, once on the padded batch and once with
``lengths`` spread evenly over 1..T (mean ≈ T/2, shuffled: ``bench.mixed_lengths``); torch
likewise, padded and through ``pack_padded_sequence``. A batch with lengths should cost no
more than the padded one: the kernels run each step over the sequences still going only.
The tables' GFLOP/s count the padded batch's work for every row (an effective rate).

    python -m pytest benchmarks/test_bench_lengths.py -p no:cacheprovider \\
        --benchmark-columns=median,iqr,rounds --benchmark-group-by=group

Timings are reported, never asserted.
"""
import pytest

from fastbptt import bench

CELLS = ["tanh", "lstm", "gru"]
SHAPES = ["small", "medium"]
CASES = [pytest.param(cell, shape, impl, id=f"{cell}-{shape}-{impl}")
         for cell in CELLS for shape in SHAPES for impl in bench.LENGTHS_IMPLEMENTATIONS]


@pytest.mark.parametrize("cell, shape_name, impl", CASES)
def test_lengths_step(run_step, cell, shape_name, impl):
    run_step(f"lengths-{cell}-{shape_name}", impl, shape_name, cell)
