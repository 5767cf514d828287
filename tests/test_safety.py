"""Hostile and careless input: ids and paths that try to leave their root (issue 13)."""
from __future__ import annotations

import os
import random
import re
from pathlib import Path

import pytest
import torch
from test_app import free_port

from seqmatch_engine.core import paths
from seqmatch_engine.core.config import ConfigError, RunConfig, load_preset
from seqmatch_engine.interfaces import cli
from seqmatch_engine.interfaces.manager import JobManager
from seqmatch_engine.storage.runs import RunError, RunFolder, list_runs
from seqmatch_engine.storage.study_folder import list_studies

PIECES = ["..", ".", "/", "\\", "\x00", "\n", "~", "runs", "a", "é", "日本", "\u202e", "%2e%2e", "..%2f", " ", "$HOME",
          "victim", "C:", "\\\\?\\", "//", "\u2215", "\uff0e\uff0e"]


def hostile_names(count: int, seed: int = 0) -> list[str]:
    """Random strings built from separators, dots, NUL, absolute prefixes and unicode."""
    rng = random.Random(seed)
    names = ["..", ".", "", "/", "/etc", "../victim", "../../victim", "a/../../victim", "a\\..\\..\\victim",
             "victim\x00", "\x00", "..\x00", os.sep + "tmp", "escape", "loop"]
    for _ in range(count):
        names.append("".join(rng.choice(PIECES) for _ in range(rng.randint(1, 6))))
    return names


@pytest.fixture
def rooted(tmp_path):
    """A runs root holding one real run, a victim folder beside it and links that point out of it."""
    root = tmp_path / "home" / "runs"
    run = RunFolder.create(root, RunConfig())
    victim = tmp_path / "home" / "victim"
    victim.mkdir()
    (victim / paths.CONFIG_FILE).write_text("{}")
    (root / "escape").symlink_to(victim, target_is_directory=True)
    (root / "loop").symlink_to(root / "loop")
    return root, run, victim


def test_no_name_resolves_outside_its_root(rooted):
    root, run, _ = rooted
    accepted = 0
    for name in hostile_names(3000):
        try:
            path = paths.child(root, name)
        except paths.UnsafeName as error:
            assert "refused" in str(error) and str(root.resolve()) in str(error)
            continue
        accepted += 1
        assert path.resolve().parent == root.resolve(), name
        assert path.parent == root
    assert accepted > 100  # plain names (letters, unicode, '~', '%2e') are allowed: they stay inside
    assert paths.child(root, run.id) == root / run.id
    for bad in (None, 3, ["a"], "a" * 256):
        with pytest.raises(paths.UnsafeName):
            paths.child(root, bad)


def test_run_ids_are_found_only_inside_the_runs_root(rooted):
    root, run, victim = rooted
    assert RunFolder.find(root, run.id).path == run.path
    for name in ("../victim", str(victim), "escape", "loop", "..", ""):
        with pytest.raises(RunError, match="refused|pick a run"):
            RunFolder.find(root, name)
    with pytest.raises(RunError, match="deleted or never existed"):
        RunFolder.find(root, "20260101-000000-mtt-gone")


def test_presets_are_looked_up_by_name_only(tmp_path):
    assert load_preset("cpu-smoke")["name"] == "cpu-smoke"
    for name in ("../presets/cpu-smoke", "/etc/passwd", "..", "cpu-smoke/../cpu-smoke"):
        with pytest.raises(ConfigError, match="not found"):
            load_preset(name)


def test_cli_refuses_runs_outside_the_runs_root(rooted, capsys):
    root, run, victim = rooted
    home = root.parent
    outside = victim.parent / "outside-export"
    for command in (["export", str(victim), "--out", str(outside)], ["export", "../victim"],
                    ["evaluate", str(victim)], ["diagnose", "escape"], ["distill", "--resume", "../victim"]):
        assert cli.main(["--home", str(home), *command]) == 2, command
        err = capsys.readouterr().err
        assert err.startswith("error: ") and ("refused" in err or "not a run folder of" in err), err
    assert not outside.exists() and (victim / paths.CONFIG_FILE).is_file()
    assert list(victim.iterdir()) == [victim / paths.CONFIG_FILE]
    # the same run given by id or by its path inside the root is accepted
    assert RunFolder.from_argument(root, run.id).path == run.path
    assert RunFolder.from_argument(root, str(run.path)).path == run.path


def test_job_manager_never_reads_or_queues_outside_its_root(rooted):
    root, _, victim = rooted
    manager = JobManager(root.parent)
    for name in ("../victim", str(victim), "escape"):
        assert manager.live(name) is None
        with pytest.raises(RunError, match="refused"):
            manager.resume(name)
        with pytest.raises(RunError, match="refused"):
            manager.submit_diagnostics(name, None)
    assert manager.jobs() == []


@pytest.fixture
def app_with_victim(rooted):
    gradio_client = pytest.importorskip("gradio_client")
    from views.layout import build_app, launch_options

    root, run, victim = rooted
    manager = JobManager(root.parent)
    demo = build_app(manager)
    demo.queue()
    port = free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True, **launch_options())
    yield gradio_client.Client(f"http://127.0.0.1:{port}/", verbose=False), root, run, victim
    demo.close()


def test_app_refuses_hostile_run_ids(app_with_victim):
    client, root, run, victim = app_with_victim
    before = sorted(p.name for p in root.parent.rglob("*"))
    for name in ("../victim", "../../victim", str(victim), "escape", "a/../../victim", "..\\victim"):
        message, _, _ = client.predict(name, api_name="/delete_run")
        assert "Cannot delete" in message and ("refused" in message or "never existed" in message), message
        archive, message = client.predict(name, api_name="/export_run")
        assert archive is None and "Cannot export" in message, message
        details, _, image = client.predict(name, api_name="/select_run")
        assert "refused" in details and image is None, details
        _, message = client.predict(name, None, api_name="/resume_run")
        assert "refused" in message, message
    assert (victim / paths.CONFIG_FILE).is_file() and run.path.is_dir()
    assert sorted(p.name for p in root.parent.rglob("*")) == before
    assert not list(Path("/").glob("*-set.zip"))


def finished_copy(tmp_path):
    """Two finished tiny runs (copied from the CLI tests' fixture would couple modules: made here, tiny)."""
    from configs import tiny_run_config

    from seqmatch_engine.orchestration.driver import Distiller

    home = tmp_path / "home"
    runs = []
    for seed in (0, 1):
        run = RunFolder.create(paths.runs_root(home), tiny_run_config(f"r{seed}", seed, (1,)))
        Distiller(run, paths.experts_root(home)).run()
        runs.append(run)
    return home, runs


def test_a_damaged_status_or_subset_marks_one_run_unreadable_and_nothing_else(tmp_path, capsys):
    home, (good, damaged) = finished_copy(tmp_path)
    (damaged.path / paths.STATUS_FILE).write_text('{"state": "do')
    assert cli.main(["--home", str(home), "runs"]) == 0
    out = capsys.readouterr().out
    good_line = next(line for line in out.splitlines() if line.startswith(good.id))
    bad_line = next(line for line in out.splitlines() if line.startswith(damaged.id))
    assert " done " in good_line and "%" in good_line
    assert "unreadable" in bad_line and "status.json is not valid JSON" in bad_line and "Delete" in bad_line
    manager = JobManager(home)
    live = manager.live(damaged.id)
    assert live.state == "unreadable" and "status.json" in live.error
    from views.layout import build_app
    from views.runs_tab import run_rows

    build_app(manager)  # the app starts
    rows = {row[0]: row for row in run_rows(manager)}
    assert rows[good.id][3] == "done" and rows[damaged.id][3] == "unreadable"
    # resuming rewrites the damaged status: the owner of a run repairs it
    damaged.update_status(state="stopped")
    assert damaged.status().state == "stopped"
    # a truncated subset: the run is no longer shown as done with its old accuracy
    subset = paths.subset_file(good.path, 0)
    subset.write_bytes(subset.read_bytes()[:40])
    row = good.overview()
    assert row.state == "unreadable" and row.accuracy is None
    assert "S1.safetensors is damaged" in row.problem and "resume the run" in row.problem
    with pytest.raises(OSError, match="Delete it and every later subset file, then resume the run"):
        good.subsets()


@pytest.mark.parametrize("images, labels, lr, message", [
    (torch.full((10, 1, 28, 28), float("nan")), torch.arange(10), 0.01,
     "images_best.pt: 7840 pixel values are NaN or infinite"),
    (torch.zeros(0, 1, 28, 28), torch.zeros(0, dtype=torch.long), 0.01, "labels_best.pt holds no labels"),
    (torch.zeros(10, 1, 28, 28), torch.arange(10) - 1, 0.01, "labels_best.pt: labels must be class indices 0, 1, ...; "
                                                              "found -1"),
    (torch.zeros(10, 1, 28, 28), torch.arange(10), -0.01, "best_lr.pt: the learned lr is -0.01; it must be a positive"),
    (torch.zeros(10, 1, 28, 28), torch.arange(10), float("nan"), "best_lr.pt: the learned lr is nan"),
    (torch.zeros(10, 1, 28, 28), torch.zeros(0, dtype=torch.long), 0.01, "has 10 images but labels_best.pt 0 labels"),
])
def test_imports_refuse_sets_that_cannot_be_evaluated(tmp_path, images, labels, lr, message):
    from seqmatch_engine.orchestration.importer import ImportFailed, import_distilled_set

    files = []
    for name, value in (("images_best.pt", images), ("labels_best.pt", labels), ("best_lr.pt", torch.tensor(lr))):
        torch.save(value, tmp_path / name)
        files.append(tmp_path / name)
    with pytest.raises(ImportFailed, match=re.escape(message)):
        import_distilled_set(files, "fashion-mnist-small", False, tmp_path / "runs")
    assert not (tmp_path / "runs").exists()  # nothing was written


def test_a_damaged_or_hostile_buffer_is_refused_with_its_name(tmp_path):
    from seqmatch_engine.orchestration.importer import ImportFailed, import_expert_buffer

    buffer = tmp_path / "replay_buffer_0.pt"
    torch.save([[[torch.ones(3)], [torch.full((3,), float("inf"))]]], buffer)
    with pytest.raises(ImportFailed, match="replay_buffer_0.pt: some parameters are NaN or infinite"):
        import_expert_buffer(buffer, tmp_path / "experts")
    buffer.write_bytes(buffer.read_bytes()[:30])
    with pytest.raises(ImportFailed, match="replay_buffer_0.pt is damaged, truncated or not a PyTorch file"):
        import_expert_buffer(buffer, tmp_path / "experts")
    assert not (tmp_path / "experts").exists()


# -- the weaker spots: one test each, through the real entry point ---------------------------------------------
def test_missing_dataset_names_the_real_option_and_leaves_no_run_behind(tmp_path, capsys):
    home = tmp_path / "home"
    for command in (["distill"], ["experts"]):
        rc = cli.main(["--home", str(home), *command, "--set", "data.dataset=cifar10",
                       "--set", f"data.root={tmp_path / 'data'}"])
        err = capsys.readouterr().err
        assert rc == 2 and "dataset 'cifar10' not found at" in err and "--set data.download=true" in err, err
        assert "CLI: --download" not in err
        assert not (home / "runs").exists() or not list((home / "runs").iterdir())


def test_a_damaged_checkpoint_is_set_aside_and_the_stage_learned_again(tmp_path, capsys):
    from test_cli import tiny_args

    from seqmatch_engine.orchestration.driver import Distiller, RunControl

    home = tmp_path / "home"
    config = cli.config_from_args(cli.build_parser().parse_args(["distill", *tiny_args("distill.snapshot_every=1")]))
    run = RunFolder.create(paths.runs_root(home), config)
    control = RunControl()
    Distiller(run, paths.experts_root(home), lambda e: e.kind == "iteration" and control.stop(), control).run()
    checkpoint = run.path / paths.CHECKPOINT_FILE
    checkpoint.write_bytes(checkpoint.read_bytes()[:100])
    assert cli.main(["--home", str(home), "distill", "--resume", run.id]) == 0
    err = capsys.readouterr().err
    assert "checkpoint.safetensors is not a readable safetensors file" in err and "started S1 again" in err
    assert run.status().state == "done" and list(run.path.glob("checkpoint.damaged-*.safetensors"))


def test_resuming_a_finished_run_changes_nothing(tmp_path, capsys):
    home, (run, _) = finished_copy(tmp_path)
    before = (run.path / paths.EVAL_FILE).read_bytes()
    assert cli.main(["--home", str(home), "distill", "--resume", run.id]) == 2
    err = capsys.readouterr().err
    assert f"run {run.id} is finished; nothing to resume" in err and "seqmatch_engine evaluate" in err
    assert (run.path / paths.EVAL_FILE).read_bytes() == before


def test_export_to_a_file_or_an_impossible_folder_says_so(tmp_path, capsys):
    home, (run, _) = finished_copy(tmp_path)
    existing = tmp_path / "a-file"
    existing.write_text("keep me")
    assert cli.main(["--home", str(home), "export", run.id, "--out", str(existing)]) == 2
    assert "is a file: give --out a folder" in capsys.readouterr().err and existing.read_text() == "keep me"
    assert cli.main(["--home", str(home), "export", run.id, "--out", str(existing / "below")]) == 2
    assert "cannot create the folder" in capsys.readouterr().err


def test_a_run_deleted_while_training_is_not_recreated(tmp_path):
    import shutil

    from configs import tiny_run_config

    from seqmatch_engine.orchestration.driver import Distiller

    run = RunFolder.create(tmp_path / "runs", tiny_run_config("gone", 0, (1,)))

    def delete_it(event):
        if event.kind == "iteration" and event.iteration == 2:
            shutil.rmtree(run.path)

    with pytest.raises(RunError, match="was deleted while the run was using it"):
        Distiller(run, tmp_path / "experts", delete_it).run()
    assert not run.path.exists()


def test_the_app_reports_a_port_in_use_without_a_traceback(tmp_path):
    import socket
    import subprocess
    import sys

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = subprocess.run([sys.executable, "app.py", "--port", str(port), "--home", str(tmp_path)],
                              cwd=paths.REPO_DIR, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert f"cannot serve on 127.0.0.1:{port}" in proc.stderr and "pass another --port" in proc.stderr
    assert "Traceback" not in proc.stderr and "SeqMatch Studio on http" not in proc.stdout


def test_unexpected_handler_failures_show_their_cause_not_a_bare_error():
    import gradio as gr

    from views.layout import readable_errors

    def broken(value):
        raise KeyError("snapshot")

    with pytest.raises(gr.Error) as info:
        readable_errors(broken)(1)
    assert "KeyError: 'snapshot'" in info.value.message and "reload the page" in info.value.message


def test_an_emptied_form_field_is_named(app_with_victim):
    from test_app import smoke_form

    client, *_ = app_with_victim
    for field, label in (("lr_img", "pixel lr (lr_img): the field is empty"), ("iterations", "iterations per subset: "
                                                                                             "the field is empty")):
        run_id, message = client.predict(*smoke_form(**{field: None}), None, api_name="/start")
        assert run_id is None and "Cannot start" in message and label in message, message


def test_a_link_to_a_folder_outside_is_refused_for_what_it_is_and_never_listed(rooted, capsys):
    root, run, victim = rooted
    assert [r.id for r in list_runs(root)] == [run.id]
    assert cli.main(["--home", str(root.parent), "runs"]) == 0
    assert "escape" not in capsys.readouterr().out
    assert cli.main(["--home", str(root.parent), "distill", "--resume", "escape"]) == 2
    assert capsys.readouterr().err.strip() == (
        f"error: run 'escape' is refused: it is a symbolic link to {victim.resolve()}, outside {root.resolve()}, and "
        f"a run is a folder inside it; remove the link, or move that folder into {root.resolve()}")
    studies = paths.studies_root(root.parent)
    studies.mkdir()
    (studies / "linked").symlink_to(victim, target_is_directory=True)
    (victim / paths.STUDY_FILE).write_text("{}")
    assert list_studies(studies) == []


def test_an_unreadable_run_says_so_in_the_app_instead_of_failing(app_with_victim):
    client, root, run, _ = app_with_victim
    (run.path / paths.CONFIG_FILE).write_text('{"seed": "0"}')  # foreign: a whole number written as text
    details, _, image = client.predict(run.id, api_name="/select_run")
    assert details == f'**Run `{run.id}` cannot be read:** seed: expected a whole number, got "0"' and image is None
    _, message = client.predict(run.id, None, api_name="/resume_run")
    assert message == f'**Cannot resume `{run.id}`:** seed: expected a whole number, got "0"'
    (run.path / paths.CONFIG_FILE).write_text(RunConfig().to_dict().__repr__())  # not JSON at all
    details, _, _ = client.predict(run.id, api_name="/select_run")
    assert details.startswith(f"**Run `{run.id}` cannot be read:** {run.path / paths.CONFIG_FILE} is not valid JSON")
