"""What a fresh interpreter imports: start-up cost is CPU that every Ray actor process pays."""

from __future__ import annotations

import subprocess
import sys


def imported(code: str, module: str) -> bool:
    """Whether running `code` in a fresh interpreter imports `module`."""
    probe = f"{code}\nimport sys\nprint({module!r} in sys.modules)"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    return out.strip().splitlines()[-1] == "True"
