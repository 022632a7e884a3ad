"""What a terminal user sees: a line at once, a line per start-up phase, a reminder while no
result has come, and a progress line for nas bench."""

import io
import threading

from raynas.controller.cli.main import main
from raynas.controller.cluster import phase
from raynas.controller.runtime import progress as progress_module
from raynas.controller.runtime.progress import Progress


class Stream(io.StringIO):
    """A log file that says when a line containing `wanted` was written."""

    def __init__(self, wanted):
        super().__init__()
        self.wanted, self.seen = wanted, threading.Event()

    def write(self, text):
        if self.wanted in text:
            self.seen.set()
        return super().write(text)


def test_phases_show_while_a_job_announces_and_only_then():
    stream = io.StringIO()
    progress = Progress(3, stream=stream)
    phase("before: nobody listens")
    with progress.announcing("the first child"):
        phase("starting ps-0")
        phase("starting worker-0 ... worker-3 (1 CPU, 0 GPU each)")
    phase("after: nobody listens")
    lines = stream.getvalue().splitlines()
    assert [line.split("] ", 1)[1] for line in lines] == ["starting ps-0",
                                                           "starting worker-0 ... worker-3 (1 CPU, 0 GPU each)"]
    assert all(line.startswith("[") and "s] " in line for line in lines)


def test_a_quiet_job_shows_no_phase():
    stream = io.StringIO()
    with Progress(3, stream=stream, enabled=False).announcing("the first child"):
        phase("starting ps-0")
    assert stream.getvalue() == ""


def test_the_reminder_names_what_the_last_phase_waits_for(monkeypatch):
    monkeypatch.setattr(progress_module, "WAITING_EVERY_S", 0.001)
    stream = Stream("each worker imports torch")
    progress = Progress(2, stream=stream)
    with progress.announcing("the first child is being evaluated"):
        phase("starting worker-0", "each worker imports torch")
        assert stream.seen.wait(60)
        progress.update({"reward": 0.5, "arch": "a"})
    reminders = [line for line in stream.getvalue().splitlines() if "no result yet" in line]
    assert any(line.endswith("after the last step: each worker imports torch") for line in reminders)
    assert not any(t.name == "progress-waiting" for t in threading.enumerate())


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_search_says_at_once_what_it_does_and_a_bad_flag_stays_one_line(monkeypatch, tmp_path):
    terminal = Terminal()
    monkeypatch.setattr("sys.stderr", terminal)
    assert main(["search", "--runtime", "local", "--evaluator", "table", "--evaluations", "3",
                 "--out", str(tmp_path / "run")]) == 0
    shown = terminal.getvalue()
    assert shown.startswith("nas search: loading torch") and "\r\x1b[2Ksearching nb201" in shown
    terminal.seek(0)
    terminal.truncate()
    try:
        main(["search", "--evaluatons", "3"])
    except SystemExit as exc:
        assert exc.code == 2
    # What stays on the terminal after the loading line is erased: the error alone.
    assert terminal.getvalue().split("\r\x1b[2K")[-1].strip().splitlines() == [
        "nas: error: unrecognized arguments: --evaluatons 3"]


def test_a_quiet_search_or_a_log_gets_no_loading_line(capsys, tmp_path):
    assert main(["search", "--runtime", "local", "--evaluator", "table", "--evaluations", "3",
                 "--out", str(tmp_path / "run")]) == 0
    assert capsys.readouterr().err.startswith("searching nb201")


def test_bench_shows_each_seed(capsys):
    assert main(["bench", "nb201", "--strategy", "random", "--evaluations", "10", "--seeds", "3"]) == 0
    err = capsys.readouterr().err.splitlines()
    assert [line.split("] ", 1)[1].split(":")[0] for line in err] == [
        "1/3 random on cifar10, seed 0", "2/3 random on cifar10, seed 1", "3/3 random on cifar10, seed 2"]
    assert all("test accuracy" in line and "mean so far" in line for line in err)
