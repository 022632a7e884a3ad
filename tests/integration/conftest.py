import pytest


@pytest.fixture(scope="session")
def ray_cluster():
    """One local Ray for the whole session: `ray.init()` costs seconds."""
    ray = pytest.importorskip("ray")
    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, logging_level="warning", log_to_driver=False)
    yield ray
    ray.shutdown()
