"""The wheel holds what the editable install serves: every module under the `raynas` root,
the package data, the `nas` entry point; and the code imports from the wheel alone."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    # setuptools builds in the source tree's build/; leave the tree as it was.
    existed = (ROOT / "build").exists()
    try:
        subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                        str(out), str(ROOT)], check=True, capture_output=True, text=True)
    finally:
        if not existed:
            shutil.rmtree(ROOT / "build", ignore_errors=True)
    (path,) = out.glob("raynas-*.whl")
    return path


def test_the_wheel_holds_every_module_and_its_data(wheel):
    from test_layout import FOLDERS, MODULES

    names = set(zipfile.ZipFile(wheel).namelist())
    for module, path in MODULES.items():
        folder = FOLDERS[next(n for n in sorted(FOLDERS, key=len, reverse=True)
                              if module == n or module.startswith(n + "."))]
        inside = path.relative_to(ROOT / folder)
        root = module.split(".")[:2] if module.count(".") else ["raynas"]
        assert "/".join([*root, *inside.parts]) in names, f"{module} is not in the wheel"
    for data in ("raynas/workers/evaluation/nb201_tabular.csv.gz", "raynas/protos/nas/v1/search.proto",
                 "raynas/protos/nas/v1/search_pb2.py", "raynas/protos/nas/v1/search_pb2_grpc.py"):
        assert data in names
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    assert "nas = raynas.controller.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()


def test_the_code_runs_from_the_wheel_alone(wheel, tmp_path):
    zipfile.ZipFile(wheel).extractall(tmp_path)
    # The editable install's finder is dropped, so every `raynas` import must come from the wheel.
    code = (
        "import sys\n"
        "sys.meta_path[:] = [f for f in sys.meta_path if 'editable' not in repr(f).lower()]\n"
        f"sys.path.insert(0, {str(tmp_path)!r})\n"
        "import raynas, raynas.controller.cli, raynas.controller.api.servicer\n"
        "from raynas.workers.evaluation import get_evaluator\n"
        f"assert raynas.controller.cli.__file__.startswith({str(tmp_path)!r}), raynas.controller.cli.__file__\n"
        "r = get_evaluator('table', 'nb201').evaluate("
        "'|nor_conv_3x3~0|+|nor_conv_3x3~0|avg_pool_3x3~1|+|skip_connect~0|nor_conv_3x3~1|skip_connect~2|')\n"
        "assert r.ok, r\n"
        "raynas.controller.cli.main(['inspect', '--space', 'nb201', '--arch', r.arch, '--json'])\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert '"params": 802426' in done.stdout
