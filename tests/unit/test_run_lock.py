"""One search at a time per run directory: a second driver (the CLI, the search service's runner,
a Ray Job) is refused with the holder named; the lock of a holder that died is taken over."""

import os
import signal
import subprocess
import sys
import threading

import pytest

from raynas.common import ConfigError
from raynas.controller.runtime.job import SearchJob
from raynas.controller.runtime.spec import SearchSpec

HOLD = """
import sys
from raynas.controller.runtime.rundir import RunLock
with RunLock(sys.argv[1]).held("out"):
    print("held", flush=True)
    sys.stdin.read()
"""


def local_search(out, **changes):
    spec = SearchSpec(**{**dict(space="nb201", strategy="random", evaluator="table", evaluations=6, runtime="local",
                                seed=1), **changes})
    return SearchJob(spec, out, progress=False)


@pytest.fixture
def stopped_run(tmp_path):
    out = tmp_path / "run"

    def stop_at_2(record):
        if record["index"] == 1:
            job.stop()

    job = local_search(out)
    job.on_record = stop_at_2
    assert job.run()["state"] == "stopped"
    return out


def hold(out) -> subprocess.Popen:
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(out)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True)
    assert holder.stdout.readline() == "held\n"
    return holder


def test_a_second_driver_is_refused_with_the_holder_named(stopped_run):
    """`nas search --resume DIR` beside a running job: both ended "done", 548 evaluations logged twice."""
    holder = hold(stopped_run)
    try:
        with pytest.raises(ConfigError, match=rf"^resume: {stopped_run} is in use by pid {holder.pid} on "):
            SearchJob.resume_from(stopped_run, progress=False).run()
    finally:
        holder.stdin.close()
        holder.wait()
    assert SearchJob.resume_from(stopped_run, progress=False).run()["state"] == "done"


def test_two_runners_of_one_process_are_refused_too(stopped_run):
    """The search service runs its searches as threads of one process (or actors of one worker)."""
    recording, release = threading.Event(), threading.Event()

    def block(record):
        recording.set()
        release.wait()

    first = SearchJob.resume_from(stopped_run, progress=False, on_record=block)
    thread = threading.Thread(target=first.run)
    thread.start()
    assert recording.wait(60)
    try:
        with pytest.raises(ConfigError, match=rf"^resume: .* is in use by pid {os.getpid()} "):
            SearchJob.resume_from(stopped_run, progress=False).run()
    finally:
        release.set()
        thread.join()


def test_the_lock_of_a_killed_holder_is_taken_over(stopped_run, capfd):
    holder = hold(stopped_run)
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait()
    assert SearchJob.resume_from(stopped_run, progress=False).run()["state"] == "done"
    assert f"took over the lock of pid {holder.pid} " in capfd.readouterr().err


def test_a_new_search_into_a_directory_in_use_is_refused(tmp_path):
    (tmp_path / "run").mkdir()
    holder = hold(tmp_path / "run")
    try:
        with pytest.raises(ConfigError, match="^out: .* is in use by pid"):
            local_search(tmp_path / "run").run()
    finally:
        holder.stdin.close()
        holder.wait()
