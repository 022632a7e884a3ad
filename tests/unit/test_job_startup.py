"""The job's start-up: its data loads while the runner starts what needs neither the data nor the
run directory (Ray, the workers), yet a bad file still fails before any file of the run is written,
and a job stopped before the runner opened its run directory still leaves a stopped result that
resume continues."""

import datafiles
import pytest

from raynas.common import ConfigError, DataError
from raynas.controller.runtime import job as jobs
from raynas.controller.runtime.job import SearchJob
from raynas.controller.runtime.plan import LOCAL
from raynas.controller.runtime.runners.base import Runner
from raynas.controller.runtime.spec import SearchSpec


def test_a_bad_data_file_fails_before_any_file_of_the_run_is_written(tmp_path):
    root = datafiles.image_folder(tmp_path / "pets", 20, 10)
    (root / "train" / "cat" / "broken.png").write_bytes(b"not an image")
    out = tmp_path / "run"
    spec = SearchSpec(space="nb201", strategy="random", dataset="image-folder", data_path=str(root), evaluations=2,
                      runtime="local", evaluator_options={"epochs": 1, "channels": 4, "layers": 1})
    with pytest.raises(DataError, match="cannot decode .*broken.png"):
        SearchJob(spec, out, progress=False).run()
    assert not (out / "spec.json").exists() and not (out / "evaluations.jsonl").exists()
    # Nothing of the failed start is in the way: the same directory takes a good search.
    (root / "train" / "cat" / "broken.png").unlink()
    assert SearchJob(spec, out, progress=False).run()["state"] == "done"


class StoppedDuringStartUp(Runner):
    """Ctrl-C (or SIGTERM) while Ray and the workers start, before the run directory was opened."""

    def run(self) -> bool:
        raise KeyboardInterrupt


def test_a_job_stopped_before_its_run_directory_opened_leaves_a_run_that_resumes(tmp_path, monkeypatch):
    out = tmp_path / "run"
    spec = SearchSpec(space="nb201", strategy="random", evaluator="table", evaluations=4, runtime="local")
    monkeypatch.setitem(jobs.RUNNERS, LOCAL, StoppedDuringStartUp)
    stopped = SearchJob(spec, out, progress=False).run()
    assert (stopped["state"], stopped["evaluations"]) == ("stopped", 0)
    monkeypatch.undo()
    assert SearchJob.resume_from(out, progress=False).run()["state"] == "done"


class MustNotStart(Runner):
    """A runner that a refused job must never reach (on Ray: the cluster and its workers)."""

    def run(self) -> bool:
        raise AssertionError("the runner started although the run directory was refused")


def test_an_out_that_holds_a_search_is_refused_before_anything_starts(tmp_path, monkeypatch):
    out = tmp_path / "run"
    spec = SearchSpec(space="nb201", strategy="random", evaluator="table", evaluations=4, runtime="local")
    assert SearchJob(spec, out, progress=False).run()["state"] == "done"
    before = sorted(p.name for p in out.iterdir())
    monkeypatch.setitem(jobs.RUNNERS, LOCAL, MustNotStart)
    with pytest.raises(ConfigError, match="^out: .* already holds a search; choose a new --out directory"):
        SearchJob(spec, out, progress=False).run()
    assert sorted(p.name for p in out.iterdir()) == before
