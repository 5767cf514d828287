"""The app's job queue: one typed queue for every kind of work (a run, a study, a run's diagnostics)."""
from __future__ import annotations

import re

from test_ownership import hold_in_another_process, slow_config, tiny_study, wait_until

from seqmatch_engine.core import paths
from seqmatch_engine.interfaces.manager import JobKind, JobManager, job_id
from seqmatch_engine.orchestration.run_diagnostics import DiagnosticsOptions
from seqmatch_engine.storage.records import RunState
from seqmatch_engine.storage.runs import RunFolder
from seqmatch_engine.storage.study_folder import StudyFolder


def test_job_ids_name_their_kind():
    assert job_id(JobKind.RUN, "r1") == "r1"
    assert job_id(JobKind.STUDY, "s1") == "study:s1"
    assert job_id(JobKind.DIAGNOSTICS, "r1") == "diagnostics:r1"


def test_every_kind_of_work_waits_in_one_queue_and_stops_there(tmp_path):
    """With another app's queue busy on this home, a run, a study and a run's diagnostics all wait, queued, in
    submission order; stopped while queued they stop, and only the run's own job writes its run folder."""
    queue = hold_in_another_process(paths.queue_lock(tmp_path))
    manager = JobManager(tmp_path)
    try:
        run_id = manager.submit(slow_config("queued-run"))
        other = RunFolder.create(paths.runs_root(tmp_path), slow_config("diagnosed"))
        diagnostics = manager.submit_diagnostics(other.id, DiagnosticsOptions())
        study = manager.submit_study(tiny_study("queued-study"))
        assert (diagnostics, study) == (job_id(JobKind.DIAGNOSTICS, other.id), "study:queued-study")
        wait_until(lambda: manager.live(run_id).waiting_for, 60, "the first job to wait")
        assert [manager.queue_position(j) for j in (run_id, diagnostics, study)] == [0, 1, 2]
        before = (other.path / paths.STATUS_FILE).read_bytes()
        for job in (study, diagnostics, run_id):
            manager.stop(job)
        for job in (run_id, diagnostics, study):
            wait_until(lambda job=job: manager.live(job).state == RunState.STOPPED, 30, f"{job} to stop")
        assert (other.path / paths.STATUS_FILE).read_bytes() == before, "a diagnostics job wrote the run's status"
        assert RunFolder.find(paths.runs_root(tmp_path), run_id).status().state == RunState.STOPPED
        assert StudyFolder.create_or_open(paths.studies_root(tmp_path), tiny_study("queued-study")).path.exists()
    finally:
        queue.kill()
        queue.wait()


def test_the_views_query_api_reads_only_and_refuses_ids_outside_its_roots(tmp_path):
    """What the views get (interfaces.queries) has no way to write a folder, and resolves ids inside its roots."""
    import pytest

    from seqmatch_engine.interfaces.queries import Library, RunError, RunView, StudyView

    writers = ("save", "update", "delete", "log", "install", "truncate", "clear", "set_aside", "add_", "pack")
    for view in (RunView, StudyView):
        assert not [name for name in dir(view) if name.startswith(writers)], view
    library = Library(tmp_path)
    run = RunFolder.create(paths.runs_root(tmp_path), slow_config("listed"))
    assert [r.id for r in library.runs()] == [run.id] and library.run(run.id).config() == run.config()
    for hostile in ("../outside", "/etc", "..", "a/../../b", ""):
        with pytest.raises(RunError):
            library.run(hostile)
        with pytest.raises(RunError):
            library.study(hostile)
    signature = library.signature()
    RunFolder.create(paths.runs_root(tmp_path), slow_config("another"))
    assert library.signature() != signature


def test_no_wrapped_line_of_a_shipped_study_reads_as_a_numbered_list_item():
    """A paragraph line that starts "825) ..." or "1000. ..." renders in the Learn tab as a new list item
    (a numbered list whose items each take one line is fine)."""
    from seqmatch_engine.interfaces import queries

    list_marker = re.compile(r"^\s*\d+[.)](\s|$)")
    for study in queries.learn_studies():
        lines = study.findings.splitlines()
        broken = [f"{study.name}: {line.strip()[:40]}" for before, line in zip(lines, lines[1:])
                  if before.strip() and not list_marker.match(before) and list_marker.match(line)]
        assert not broken, f"reflow these lines so no number opens them: {broken}"


def test_the_learn_query_reads_each_shipped_study_as_its_title_findings_table_and_figures(tmp_path, monkeypatch):
    from seqmatch_engine.interfaces import queries

    shipped = {study.name: study for study in queries.learn_studies()}
    assert {"headroom", "convergence", "soft-labels"} <= set(shipped)
    headroom = shipped["headroom"]
    assert headroom.title and not headroom.findings.startswith("#") and "| IPC" in headroom.table
    assert [p.stem for p in headroom.figures] == ["headroom-accuracy", "headroom-paired", "headroom-coupling"]
    assert [p.stem for p in shipped["soft-labels"].figures] == [  # as the Studies tab lays them out
        "soft-labels-accuracy", "soft-labels-paired", "soft-labels-fair-gain", "soft-labels-coupling"]

    made = tmp_path / "learn"
    (made / "studies" / "b-study").mkdir(parents=True)
    (made / "studies" / "b-study" / "findings.md").write_text("# \nwhat it shows")  # no title: its folder's name
    (made / "studies" / "a-no-findings").mkdir()  # a folder without findings is not a study to report
    (made / "z.png").write_bytes(b"")
    for name in ("b-study-coupling", "an-extra", "b-study-accuracy", "b-study-fair-gain", "b-study-paired"):
        (made / "studies" / "b-study" / f"{name}.png").write_bytes(b"")
    monkeypatch.setattr(queries.paths, "LEARN_DIR", made)
    figures = tuple(made / "studies" / "b-study" / f"{name}.png" for name in (
        "b-study-accuracy", "b-study-paired", "b-study-fair-gain", "b-study-coupling", "an-extra"))
    assert queries.learn_studies() == [queries.LearnStudy("b-study", "b-study", "what it shows", None, figures)]
    assert queries.learn_pictures() == [made / "z.png"]
