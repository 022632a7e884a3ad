"""Every benchmark script still runs against the current code: its imports and its flags (the
figures themselves are in docs/benchmarks.md, with the commands that made them)."""

import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.mark.parametrize("script", sorted(p.name for p in BENCHMARKS.glob("*.py")))
def test_benchmark_script_starts(script):
    done = subprocess.run([sys.executable, str(BENCHMARKS / script), "--help"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "usage:" in done.stdout


@pytest.mark.slow
def test_the_gpu_script_runs_dry_on_the_cpu():
    done = subprocess.run(["bash", str(BENCHMARKS / "gpu.sh"), "--dry-run"], capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr
    assert '"ours_order2_images_per_s"' in done.stdout and '"evaluations": 4, "failed": 0' in done.stdout
