"""One owner at a time across processes: real CLI processes on one run and one study, a killed owner, two apps.

The owner is frozen with SIGSTOP while it holds the lock (so the test does not race its training), then SIGKILLed:
the OS frees its lock, and a resume proceeds at once.
"""
from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from configs import tiny_run_config

from seqmatch_engine.core import paths
from seqmatch_engine.core.config import RunConfig
from seqmatch_engine.core.phases import PhaseKind
from seqmatch_engine.core.study_spec import StudySpec
from seqmatch_engine.interfaces.manager import JobManager
from seqmatch_engine.interfaces.queries import Library
from seqmatch_engine.orchestration.driver import Distiller
from seqmatch_engine.orchestration.eval_cache import EvaluationCache
from seqmatch_engine.storage.expert_cache import ExpertCache
from seqmatch_engine.storage.ownership import Owned, OwnerLock
from seqmatch_engine.storage.runs import RunFolder
from seqmatch_engine.storage.study_folder import StudyFolder
from views.render import status_html
from views.studies_tab import study_status_html

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def cli(home: Path, *args: str, **popen) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "seqmatch_engine", "--home", str(home), *args], cwd=paths.REPO_DIR,
                            env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen)


def finish(proc: subprocess.Popen, timeout: float = 300) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


def wait_until(condition, timeout: float = 180, what: str = "") -> None:
    deadline = time.time() + timeout
    while not condition():
        assert time.time() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def iterations(run_path: Path) -> list[tuple[int, int]]:
    records = [json.loads(line) for line in (run_path / paths.METRICS_FILE).read_text().splitlines()]
    return [(r["stage"], r["iteration"]) for r in records if r["kind"] == "iteration"]


def assert_each_iteration_once(run: RunFolder) -> None:
    found = iterations(run.path)
    expected = [(k, i) for k, s in enumerate(run.config().distill.subsets) for i in range(1, s.iterations + 1)]
    assert found == expected, f"{run.id}: each iteration once, in order"


def freeze_when_training(proc: subprocess.Popen, lock: OwnerLock, metrics: Path) -> None:
    """Once `proc` holds `lock` and has logged an iteration to `metrics`: SIGSTOP it (it keeps the lock)."""
    wait_until(lambda: proc.poll() is None and lock.owner() is not None and metrics.is_file()
               and iterations(metrics.parent), what="the first owner to train")
    assert lock.owner().pid == proc.pid
    os.kill(proc.pid, signal.SIGSTOP)


SUBSETS = [{"ipc": 1, "interval": [0, 3], "iterations": 40}] * 2  # long enough to be caught training


def slow_config(name: str):
    return tiny_run_config(name, 0, (1, 1), snapshot_every=1, subsets=SUBSETS)


def test_two_processes_resume_one_run_one_trains_the_other_refuses_naming_the_owner(tmp_path):
    home = tmp_path / "home"
    run = RunFolder.create(paths.runs_root(home), slow_config("owned"))
    first = cli(home, "distill", "--resume", run.id)
    try:
        freeze_when_training(first, run.lock(), run.path / paths.METRICS_FILE)
        before = {name: (run.path / name).read_bytes() for name in (paths.STATUS_FILE, paths.METRICS_FILE)}
        rc, _, err = finish(cli(home, "distill", "--resume", run.id))
        assert rc == 2
        assert f"error: run {run.id} is in use by process {first.pid} on {socket.gethostname()} (since " in err
        assert "Let it finish there or stop it" in err and f"distill --resume {run.path} --wait" in err
        assert {name: (run.path / name).read_bytes() for name in before} == before, "the refused process wrote"
        waiting = cli(home, "distill", "--resume", run.id, "--wait")
        line = next(line for line in iter(waiting.stderr.readline, "") if line.startswith("waiting"))
        assert line.startswith(f"waiting: run {run.id} is in use by process {first.pid} on ")
        assert line.rstrip().endswith("this command goes on when it is free (Ctrl-C gives up)")
        os.kill(first.pid, signal.SIGKILL)  # the OS frees the lock of a killed owner at once
        first.wait(timeout=30)
        rc, out, err = finish(waiting)
        assert rc == 0, err
        assert "synthetic" in out and run.status().state == "done"
        assert_each_iteration_once(run)
    finally:
        if first.poll() is None:
            first.kill()


def test_a_killed_run_keeps_its_phase_time_up_to_its_last_checkpoint(tmp_path):
    """A kill (a machine replaced, an OOM) loses only the work after the last checkpoint, which the resumed run
    redoes; the time of the work kept stays in status.json, so the phase times and a study's pace stay true."""
    home = tmp_path / "home"
    run = RunFolder.create(paths.runs_root(home), slow_config("killed"))
    first = cli(home, "distill", "--resume", run.id)
    try:
        wait_until(lambda: run.status().phase == "distilling S1" and run.status().iteration >= 3, what="3 checkpoints")
        os.kill(first.pid, signal.SIGKILL)
        first.wait(timeout=30)
        kept = run.status().phase_seconds
        assert kept.get("distilling S1", 0.0) > 0.0, kept
        rc, _, err = finish(cli(home, "distill", "--resume", run.id))
        assert rc == 0, err
        assert run.status().phase_seconds["distilling S1"] > kept["distilling S1"]
    finally:
        if first.poll() is None:
            first.kill()


class Killed(BaseException):
    """What a SIGKILL leaves: the process gone at that line, nothing written after it (not an Exception, so the
    driver records no failure)."""


@pytest.mark.parametrize("phase, cache, filing", [("experts 1", ExpertCache, "save"),
                                                  ("evaluating", EvaluationCache, "put")])
def test_a_run_killed_between_two_filed_results_keeps_the_time_of_the_first(phase, cache, filing, tmp_path,
                                                                           monkeypatch):
    """Experts and evaluation nets have no checkpoints but their files: a run killed after one of them is filed
    (an expert trajectory, an evaluation net's accuracy) keeps that phase's time so far, as a distilling checkpoint
    does, instead of losing the whole phase from its record."""
    file_result, filed = getattr(cache, filing), []

    def file_then_die_at_the_second(self, *args):
        if filed:
            raise Killed()
        file_result(self, *args)
        filed.append(run.status().phase)

    config = tiny_run_config("killed", 0, (1,)).to_dict()
    config["eval"]["num_nets"] = 2
    run = RunFolder.create(paths.runs_root(tmp_path), RunConfig.from_dict(config))
    monkeypatch.setattr(cache, filing, file_then_die_at_the_second)
    with pytest.raises(Killed):
        Distiller(run, paths.experts_root(tmp_path)).run()
    assert filed == [phase]
    kept = run.status().phase_seconds
    assert kept.get(phase, 0.0) > 0.0, kept


def test_a_net_filed_while_distilling_leaves_the_time_to_the_checkpoints(tmp_path):
    """A selection net is filed before its iteration's checkpoint; a run killed between the two resumes from the
    last checkpoint and times those iterations again, so filing records no distilling time (checkpoints do)."""
    run = RunFolder.create(paths.runs_root(tmp_path), tiny_run_config("selecting", 0, (1,)))
    distiller = Distiller(run, paths.experts_root(tmp_path))
    distiller.phase("distilling S1", PhaseKind.DISTILLING, 0)
    distiller.ctx.on_filed()
    assert "distilling S1" not in run.status().phase_seconds
    distiller.phase("evaluating", PhaseKind.EVALUATING)
    distiller.ctx.on_filed()
    assert set(run.status().phase_seconds) == {"distilling S1", "evaluating"}


def tiny_study(name: str) -> StudySpec:
    base = tiny_run_config("base", 0, (1, 1), snapshot_every=1, subsets=SUBSETS).to_dict()
    return StudySpec.from_dict({"name": name, "config": base, "grid": [{"ipc": 2, "subsets": 2}], "seeds": [0],
                                "methods": ["mtt", "seqmatch"], "controls": False})


def test_two_processes_resume_one_study_one_runs_it_the_other_refuses_and_a_kill_frees_it(tmp_path):
    home, spec_file = tmp_path / "home", tmp_path / "study.json"
    spec = tiny_study("owned")
    spec_file.write_text(json.dumps(spec.to_dict()))
    study = StudyFolder.create_or_open(paths.studies_root(home), spec)
    first_run = study.runs_root / "ipc002-k2-mtt-seed0"
    first = cli(home, "study", str(spec_file))
    try:
        freeze_when_training(first, study.lock(), first_run / paths.METRICS_FILE)
        before = {p: p.read_bytes() for p in (study.path / paths.STUDY_STATUS_FILE, first_run / paths.METRICS_FILE)}
        rc, _, err = finish(cli(home, "study", str(spec_file)))
        assert rc == 2, err
        assert f"error: study owned is in use by process {first.pid} on {socket.gethostname()} (since " in err
        assert "run the same command with --wait" in err
        assert "jobs run on" not in err, "a refused study builds nothing"
        assert {p: p.read_bytes() for p in before} == before, "the refused process wrote"
        assert RunFolder(first_run).status().state == "running"  # killed while it trains
        card = study_status_html(Library(home).study("owned"), None)  # what the Studies tab shows meanwhile
        assert f"Running in process {first.pid} on " in card and "0/2 runs done" in card
        assert re.search(r"now ipc002-k2-mtt-seed0 · distilling S1 \d+/40", card), card
        assert "left" not in card, "no run has finished: nothing prices the rest"
        os.kill(first.pid, signal.SIGKILL)
        first.wait(timeout=30)
        started = time.time()
        rc, out, err = finish(cli(home, "study", str(spec_file)))
        assert rc == 0, err
        assert "waiting" not in err and time.time() - started < 240
        for run_path in sorted(study.runs_root.iterdir()):
            assert_each_iteration_once(RunFolder(run_path))
        assert study.status().state == "done"
    finally:
        if first.poll() is None:
            first.kill()


def test_a_study_stopped_by_sigterm_records_stopped(tmp_path):
    home, spec_file = tmp_path / "home", tmp_path / "study.json"
    spec = tiny_study("terminated")
    spec_file.write_text(json.dumps(spec.to_dict()))
    proc = cli(home, "study", str(spec_file))
    study_path = paths.studies_root(home) / "terminated"
    wait_until(lambda: (study_path / "runs" / "ipc002-k2-mtt-seed0" / paths.METRICS_FILE).is_file(),
               what="the study to train")
    proc.send_signal(signal.SIGTERM)
    rc, _, err = finish(proc, 60)
    assert rc == 130 and "interrupted; run the same command again to resume the study" in err, (rc, err[-3000:])
    study = StudyFolder(study_path)
    assert study.status().state == "stopped" and study.lock().owner() is None
    assert study.status().error is None, "a stop is not an error (the Studies tab showed it in red after a resume)"
    assert RunFolder(study.runs_root / "ipc002-k2-mtt-seed0").status().state == "stopped"
    study.update_status(error="RuntimeError: from the last attempt")  # as a failed study leaves it
    rc, _, err = finish(cli(home, "study", str(spec_file)))
    assert rc == 0, err
    assert study.status().state == "done" and study.status().error is None


def test_sigterm_inside_code_run_from_a_string_still_exits_130(tmp_path):
    """The CI failure this guards: a SIGTERM that lands while code compiled from a string runs (library code
    does this) must end the command with 130 once it is handled, not with death by SIGINT (returncode -2)."""
    (tmp_path / "stopped_in_exec.py").write_text(
        "import os, signal, sys, threading\n"
        "from seqmatch_engine.interfaces.cli import _terminated\n"
        "signal.signal(signal.SIGTERM, _terminated)\n"
        "threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGTERM)).start()\n"
        "try:\n    exec('while True: pass')\n"
        "except KeyboardInterrupt:\n    print('handled', flush=True)\n    sys.exit(130)\n")
    env = {**ENV, "PYTHONPATH": str(paths.REPO_DIR)}
    proc = subprocess.run([sys.executable, "-m", "stopped_in_exec"], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=120)
    assert (proc.returncode, proc.stdout.strip()) == (130, "handled"), proc.stderr


def hold_in_another_process(lock_path: Path) -> subprocess.Popen:
    """A process that holds the lock at `lock_path` until killed (it prints 'held' once it does)."""
    code = ("import sys, time\nfrom seqmatch_engine.storage.ownership import OwnerLock\n"
            "with OwnerLock(sys.argv[1], 'x', 'y').hold():\n    print('held', flush=True)\n    time.sleep(600)\n")
    proc = subprocess.Popen([sys.executable, "-c", code, str(lock_path)], cwd=paths.REPO_DIR, env=ENV,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_the_lock_refuses_within_a_process_and_frees_itself_when_its_owner_dies(tmp_path):
    lock = OwnerLock(tmp_path / "owner.lock", "run x", "Do this.")
    with lock.hold():
        with lock.hold():  # the same thread again (the CLI, then the driver)
            assert lock.owner().pid == os.getpid()
    assert lock.owner() is None and (tmp_path / "owner.lock").read_text() == ""
    other = hold_in_another_process(tmp_path / "owner.lock")
    try:
        with pytest.raises(Owned, match=rf"run x is in use by process {other.pid} on .* \(since .*\)\. Do this\."):
            with lock.hold():
                pass
        seen = []
        with pytest.raises(Owned):
            with lock.hold(wait=True, on_wait=seen.append, stopping=lambda: len(seen) >= 2):
                pass
        assert [owner.pid for owner in seen] == [other.pid, other.pid]
    finally:
        other.kill()
        other.wait()
    with lock.hold():  # the OS freed it
        pass


def test_creating_a_run_or_study_that_exists_never_crashes(tmp_path):
    root = tmp_path / "runs"
    RunFolder.create(root, slow_config("a"), "same")
    with pytest.raises(Exception) as info:
        RunFolder.create(root, slow_config("a"), "same")
    assert type(info.value).__name__ == "RunError" and "exists but is not a run folder" in str(info.value)
    (root / "empty").mkdir()
    assert RunFolder.create(root, slow_config("a"), "empty").config().name == "a"  # an empty leftover is reused
    assert not list(root.glob(".creating-*"))
    spec = tiny_study("twice")
    first = StudyFolder.create_or_open(paths.studies_root(tmp_path), spec)
    assert StudyFolder.create_or_open(paths.studies_root(tmp_path), spec).path == first.path


def test_two_apps_on_one_home_serialise_their_runs_and_say_so(tmp_path):
    queue = hold_in_another_process(paths.queue_lock(tmp_path))  # another app's queue runs a job on this home
    manager = JobManager(tmp_path)
    try:
        run_id = manager.submit(slow_config("second-app"))
        wait_until(lambda: manager.live(run_id).waiting_for, 60, "the job to wait")
        card = status_html(manager.live(run_id))
        assert "Queued" in card and f"is in use by process {queue.pid} on {socket.gethostname()}" in card
        assert "it starts here when that one ends" in card and "one run at a time" in card
        assert manager.live(run_id).state == "queued" and not iterations_started(manager, run_id)
        queue.kill()
        queue.wait()
        wait_until(lambda: manager.live(run_id).state == "done", 240, "the run to finish once the queue is free")
        assert manager.live(run_id).waiting_for is None
    finally:
        if queue.poll() is None:
            queue.kill()


def iterations_started(manager: JobManager, run_id: str) -> bool:
    return (manager.run(run_id).path / paths.METRICS_FILE).exists()


def test_an_app_waits_for_a_run_the_cli_trains_and_never_writes_its_status(tmp_path):
    run = RunFolder.create(paths.runs_root(tmp_path), slow_config("cli-owned"))
    owner = hold_in_another_process(run.path / paths.LOCK_FILE)
    manager = JobManager(tmp_path)
    try:
        before = (run.path / paths.STATUS_FILE).read_bytes()
        manager.resume(run.id)
        wait_until(lambda: manager.live(run.id).waiting_for, 60, "the job to wait")
        assert f"run {run.id} is in use by process {owner.pid}" in manager.live(run.id).waiting_for
        manager.stop(run.id)
        wait_until(lambda: manager.live(run.id).state == "stopped", 30, "the waiting job to stop")
        assert (run.path / paths.STATUS_FILE).read_bytes() == before, "the app wrote over the owner's status"
    finally:
        owner.kill()
        owner.wait()
