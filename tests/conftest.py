import os

import pytest

# The suite's tensors are tiny, so a second intra-op thread only adds synchronisation; and while
# another job holds the other core, every op waits for a descheduled thread (a small DARTS network's
# forward: 0.3 s on one thread, 7 s on two). Set before torch starts, for this process and the
# `nas` and benchmark processes the tests start; Ray's workers set their own.
os.environ["OMP_NUM_THREADS"] = "1"

import torch  # noqa: E402

# Also set directly: a plugin may have loaded torch before the variable above was read.
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def ray_context():
    """One local Ray for the whole session: `ray.init()` costs seconds."""
    ray = pytest.importorskip("ray")
    # The dashboard serves the Ray Jobs API (tests/integration/test_ray_job.py).
    # "local": a Ray of this session's own; without it ray.init joins the last cluster started on
    # this machine (someone else's, on a shared host).
    context = ray.init(address="local", num_cpus=2, include_dashboard=True, logging_level="warning",
                       log_to_driver=False, _system_config={"worker_niceness": 0})
    yield context
    ray.shutdown()


@pytest.fixture(scope="session")
def ray_cluster(ray_context):
    import ray

    return ray


@pytest.fixture(scope="session")
def tiny_ptb(tmp_path_factory):
    """A PTB-shaped folder (ptb.train/valid/test.txt) of a 40-word Markov language; the real corpus
    stays outside the project."""
    import datafiles

    return datafiles.ptb_folder(tmp_path_factory.mktemp("ptb"))
