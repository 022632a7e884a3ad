"""A search submitted as a Ray Job (`ray job submit -- nas search ...`) runs on the cluster
and leaves its run directory like a local one."""

import json
import shlex
import time
from pathlib import Path

from rayjobs import submit


def test_nas_search_as_a_ray_job(ray_context, tmp_path):
    from ray.job_submission import JobStatus, JobSubmissionClient

    client = JobSubmissionClient(f"http://{ray_context.dashboard_url}")
    out = tmp_path / "run"
    # The command deploy/README.md documents, with a small budget.
    entrypoint = ("nas search --address auto --space nb201 --evaluator table --strategy evolution "
                  f"--evaluations 20 --workers 1 --cpus-per-child 0.5 --quiet --out {shlex.quote(str(out))}")
    job = submit(client, entrypoint)
    deadline = time.time() + 180
    while (status := client.get_job_status(job)) not in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED):
        assert time.time() < deadline, client.get_job_logs(job)
        time.sleep(0.5)
    assert status == JobStatus.SUCCEEDED, client.get_job_logs(job)
    result = json.loads(Path(out, "result.json").read_text())
    assert result["state"] == "done" and result["evaluations"] == 20 and result["runtime"] == "ray"
    assert "best reward" in client.get_job_logs(job)
