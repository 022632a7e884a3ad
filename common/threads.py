"""torch's intra-op thread count, set for a block and then restored."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator


@contextlib.contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Run the block (or decorated function) with `n` intra-op threads (None: leave as is).

    Restored afterwards, so one component's setting never leaks into the rest of
    the process. Tiny tensors (the controller's [n, 35]) and small children
    gain nothing from more threads on a busy machine, only synchronisation:
    sampling ran up to 100 times slower with 2 threads on 2 loaded cores.
    """
    import torch

    before = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        if n:
            torch.set_num_threads(before)
