"""benchmarks/soak.py: the soak's report has the rows and the verdict it promises (timings are
not judged here: they belong to the soak itself, on a quiet machine)."""
import importlib.util
import math
from pathlib import Path

import pytest

SOAK = Path(__file__).resolve().parent.parent / "benchmarks" / "soak.py"


@pytest.fixture(scope="module")
def soak():
    spec = importlib.util.spec_from_file_location("soak", SOAK)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_soak_report_has_a_row_per_slice_and_a_verdict(soak, backend):
    lines = []
    report = soak.soak(25, every=10, warmup=10, T=6, B=2, H=4, backend=backend, out=lines.append)
    assert report["config"]["backend"] == backend
    assert report["config"]["warmup"] == 10 and report["config"]["every"] == 10
    assert [row["updates"] for row in report["rows"]] == [10, 20, 25]
    for row in report["rows"]:
        assert set(row) == {"updates", "rss_mib", "ms_per_update", "loss"}
        assert row["rss_mib"] > 0 and row["ms_per_update"] > 0 and math.isfinite(row["loss"])
    assert math.isfinite(report["rss_growth"]) and math.isfinite(report["time_drift"])
    verdict = report["verdict"]
    assert set(verdict) == {"memory_flat", "time_flat", "passed"}
    assert all(isinstance(v, bool) for v in verdict.values())
    assert verdict["passed"] == (verdict["memory_flat"] and verdict["time_flat"])
    # one line per row besides the header lines, and the verdict last
    assert sum(line.split()[0].isdigit() for line in lines) == 3
    assert lines[-1] == f"soak: {'PASSED' if verdict['passed'] else 'FAILED'}"


def test_the_smoke_mode_picks_its_slices_from_the_update_count(soak):
    report = soak.soak(40, T=4, B=2, H=3, backend="numpy")
    assert report["config"]["every"] == 4 and len(report["rows"]) == 10
    assert report["config"]["warmup"] == 8  # the first fifth


def test_rss_is_read_in_bytes(soak):
    assert 2**20 < soak.rss_bytes() < 2**40


def test_the_soak_refuses_no_updates(soak):
    with pytest.raises(ValueError, match="updates"):
        soak.soak(0)
