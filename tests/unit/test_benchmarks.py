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
# Six processes that each import torch, one of them starting its own Ray: minutes when other jobs share the cores.
@pytest.mark.timeout(900)
def test_the_gpu_script_runs_dry_on_the_cpu():
    done = subprocess.run(["bash", str(BENCHMARKS / "gpu.sh"), "--dry-run"], capture_output=True, text=True,
                          timeout=850)
    assert done.returncode == 0, done.stderr
    assert '"ours_order2_images_per_s"' in done.stdout and '"evaluations": 4, "failed": 0' in done.stdout
