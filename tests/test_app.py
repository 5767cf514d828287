"""The app through a real Gradio server, driven by gradio_client, plus its handlers directly."""
from __future__ import annotations

import hashlib
import pickle
import time
import zipfile
from pathlib import Path

import pytest
import torch
from app_server import free_port

from seqmatch_engine.core.config import ConfigError
from seqmatch_engine.interfaces.manager import JobManager
from views.forms import FormValues, config_from_form, form_defaults, parse_intervals

gradio_client = pytest.importorskip("gradio_client")


@pytest.fixture
def app(tmp_path):
    from views.layout import build_app, launch_options

    manager = JobManager(tmp_path)
    demo = build_app(manager)
    demo.queue()
    port = free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True, **launch_options())
    client = gradio_client.Client(f"http://127.0.0.1:{port}/", verbose=False)
    yield client, manager
    for live in manager.jobs():
        manager.stop(live.run_id)
    demo.close()


def wait_for(predicate, timeout=120.0, every=0.3):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise AssertionError("condition not met in time")


def form_defaults_list(preset: str, **changes) -> list:
    """The form's values as `preset` fills them, with `changes`, in the order the UI passes them."""
    values = form_defaults(preset)
    return [getattr(values, name) if name not in changes else changes[name] for name in FormValues.fields()]


def smoke_form(**changes) -> list:
    return form_defaults_list("cpu-smoke", **changes)


def digest(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def test_form_validation_messages():
    with pytest.raises(ConfigError, match="IPC 2 cannot be split into 3 subsets"):
        config_from_form(FormValues(*smoke_form(ipc=2, num_subsets=3)))
    with pytest.raises(ConfigError, match="start-epoch intervals"):
        parse_intervals("zero to eight", 2)
    assert parse_intervals("0-8", 2) == [(0, 8), (0, 8)]
    config = config_from_form(FormValues(*smoke_form(method="Static MTT")))
    assert config.method == "mtt" and config.ipc == 2
    config = config_from_form(FormValues(*smoke_form(objective="DATM (soft labels)")))
    assert config.method == "seqmatch-datm" and config.distill.datm.lr_label == 2.0
    assert config_from_form(FormValues(*form_defaults_list("fashion-ipc20-datm", objective="MTT"))).method == "seqmatch"
    with pytest.raises(ConfigError, match="objective: 'DM' is not one of MTT, DATM"):
        config_from_form(FormValues(*smoke_form(objective="DM")))


def test_start_poll_pause_resume_stop_reopen_export_import(app, tmp_path):
    client, manager = app
    run_id, message = client.predict(*smoke_form(ipc=0), None, api_name="/start")
    assert run_id is None and "Cannot start" in message and "ipc" in message.lower()

    run_id, message = client.predict(*smoke_form(), None, api_name="/start")
    assert run_id and run_id in message

    seen = []

    def images_changed():
        status, image, _, _ = client.predict(run_id, api_name="/poll")
        if isinstance(image, str):  # a skipped (unchanged) image comes back as an update dict
            seen.append(digest(image))
        return len(set(seen)) >= 2

    wait_for(images_changed, timeout=180)
    assert "Running" in client.predict(run_id, api_name="/poll")[0]

    assert "Paused" in client.predict(run_id, api_name="/pause")
    time.sleep(1.5)  # let the iteration in flight finish
    frozen_at = manager.live(run_id).iteration
    time.sleep(2.0)
    assert manager.live(run_id).iteration == frozen_at and manager.live(run_id).state == "paused"
    assert "Resumed" in client.predict(run_id, api_name="/resume")
    wait_for(lambda: manager.live(run_id).iteration != frozen_at or manager.live(run_id).phase != "distilling S1")
    assert "Stopping" in client.predict(run_id, api_name="/stop")
    wait_for(lambda: manager.live(run_id).state == "stopped")

    rows, _ = client.predict(api_name="/refresh_runs")
    row = next(r for r in rows["data"] if r[0] == run_id)
    assert row[3] == "stopped"

    assert "Resuming" in client.predict(run_id, None, api_name="/resume_run")[1]
    wait_for(lambda: manager.live(run_id).state == "done", timeout=300)
    details, timeline, final = client.predict(run_id, api_name="/select_run")
    assert "seqmatch" in details and "random real" in details and final
    assert client.predict(run_id, 0, api_name="/timeline")

    status = client.predict([run_id], "pca", api_name="/diagnostics_compute")  # the job list stays in session state
    assert "Queued" in status or "Running" in status

    def diagnostics_done():
        status, summary, *figures = client.predict([run_id], api_name="/diagnostics_poll")
        return (status, summary, figures) if "computed" in str(status) else None

    status, summary, figures = wait_for(diagnostics_done, timeout=300)
    assert "coupling index" in summary and "SEQMATCH" in summary
    assert all(isinstance(f, dict) and f.get("plot") for f in figures), figures  # G1 x3, G2, G3, G4 rendered

    archive, message = client.predict(run_id, api_name="/export_run")
    names = set(zipfile.ZipFile(archive).namelist())
    assert {"distilled_set.safetensors", "S1.png", "S2.png"} <= names

    images = torch.randn(20, 1, 28, 28)
    labels = torch.arange(10).repeat_interleave(2)
    for name, value in (("images_best.pt", images), ("labels_best.pt", labels), ("best_lr.pt", torch.tensor(0.02))):
        torch.save(value, tmp_path / name)
    message, rows, _, _ = client.predict([gradio_client.handle_file(str(tmp_path / n)) for n in
                                          ("images_best.pt", "labels_best.pt", "best_lr.pt")],
                                         "fashion-mnist-small", False, api_name="/import_files")
    assert "Imported the set as run" in message
    imported = message.split("`")[1]
    assert any(r[0] == imported for r in rows["data"])

    (tmp_path / "evil").mkdir()  # a pickle of an arbitrary object must be refused, not executed
    (tmp_path / "evil" / "images_best.pt").write_bytes(pickle.dumps(Path("/etc/passwd")))
    (tmp_path / "evil" / "labels_best.pt").write_bytes(b"\x00garbage")
    message, _, _, _ = client.predict([gradio_client.handle_file(str(tmp_path / "evil" / n)) for n in
                                    ("images_best.pt", "labels_best.pt")], "fashion-mnist-small", False,
                                   api_name="/import_files")
    assert "Import failed" in message and "images_best.pt holds Python objects other than tensors" in message
    assert "was not loaded" in message and "Do not load it with safety checks off" in message
    assert "weights_only" not in message and "False" not in message  # no advice to switch the check off

    message, rows, _ = client.predict(imported, api_name="/delete_run")
    assert "Deleted" in message and not any(r[0] == imported for r in rows["data"])


def test_compare_tab_fills_from_its_preset_and_pairs_under_the_authors_budget_by_default(app):
    client, manager = app
    smoke = form_defaults("cpu-smoke")
    ipc, k, iterations = client.predict("cpu-smoke", api_name="/compare_preset")
    assert (ipc, k, iterations) == (smoke.ipc, smoke.num_subsets, smoke.iterations)
    mtt_id, seq_id, datm_id, seq_datm_id, message = client.predict("cpu-smoke", ipc, k, iterations,
                                                                    api_name="/compare_start")  # default budget
    assert datm_id is None and seq_datm_id is None  # MTT and SeqMatch are ticked by default
    assert "budget convention **per-image**" in message and "demonstration, not evidence" in message
    mtt, seq = manager.run(mtt_id).config(), manager.run(seq_id).config()
    assert mtt.method == "mtt" and seq.method == "seqmatch" and mtt.budget == "per-image"
    assert mtt.distill.subsets[0].iterations == iterations
    assert [s.iterations for s in seq.distill.subsets] == [iterations] * k
    wait_for(lambda: all(manager.live(r).state == "done" for r in (mtt_id, seq_id)), timeout=300)
    gains, figure, note, *_ = client.predict(mtt_id, seq_id, None, None, api_name="/compare_charts")
    assert gains.startswith("**Gain over random real, same labels:**") and "points over random real" in gains
    assert "budget convention **per-image**" in note and "One seed per method: a demonstration" in note
    bars = figure["plot"] if isinstance(figure, dict) else figure
    assert "static MTT IPC" in str(bars) and "SeqMatch IPC" in str(bars) and "random real" in str(bars)
    *_, message = client.predict("cpu-smoke", ipc, k, iterations, "total", api_name="/compare_start")
    assert "budget convention **total**" in message and f"({k * iterations} iterations)" in message
    *ids, message = client.predict("cpu-smoke", ipc, k, iterations, "per-image", ["datm", "seqmatch-datm"],
                                   api_name="/compare_start")
    assert ids[:2] == [None, None] and [manager.run(i).config().method for i in ids[2:]] == ["datm", "seqmatch-datm"]
    *ids, message = client.predict("cpu-smoke", ipc, k, iterations, "per-image", [], api_name="/compare_start")
    assert "Cannot start:** methods: tick at least one method" in message
    for live in manager.jobs():
        manager.stop(live.run_id)


def test_studies_tab_lists_shows_and_refuses(app, tmp_path):
    from test_study import tiny_spec

    from seqmatch_engine.core import paths
    from seqmatch_engine.orchestration.study import run_study
    from seqmatch_engine.storage.study_folder import StudyFolder
    from views.studies_tab import StudiesTab

    client, manager = app
    study = StudyFolder.create_or_open(manager.studies_root, tiny_spec(seeds=[0], controls=False))
    run_study(study, paths.experts_root(tmp_path))
    choices = client.predict(api_name="/study_list")
    assert "tiny" in str(choices)
    status, table, accuracy, paired, fair_gain, coupling = client.predict("tiny", api_name="/study_show")
    assert "Done" in status and "2/2 runs done" in status
    assert "budget convention **per-image**" in table and "| 2 | 2 |" in table
    assert None not in (accuracy, paired, fair_gain, coupling)
    status, table, *_ = client.predict("../runs", api_name="/study_show")
    assert "refused" in status and table == ""
    with pytest.raises(gradio_client.exceptions.AppError, match="not in the list of choices"):
        client.predict("../../etc/passwd", api_name="/study_start")  # the preset list itself refuses it
    studies = StudiesTab(manager)
    _, message = studies.on_start("../../etc/passwd")
    assert "Cannot start the study" in message and "not found" in message


def test_a_cifar_set_imports_and_shows_without_the_dataset(app, tmp_path, monkeypatch):
    """No CIFAR-10 on disk: the set is imported and drawn with CIFAR-10's constants, and the run says what that
    means; an imported expert buffer is listed where it was stored."""
    client, manager = app
    monkeypatch.setenv("SEQMATCH_DATA_ROOT", str(tmp_path / "no-data"))
    folder = tmp_path / "cifar"
    folder.mkdir()
    for name, value in (("images_best.pt", torch.randn(20, 3, 32, 32)), ("labels_best.pt", torch.arange(10).repeat(2))):
        torch.save(value, folder / name)
    message, rows, _, _ = client.predict([gradio_client.handle_file(str(folder / n)) for n in
                                          ("images_best.pt", "labels_best.pt")], "cifar10", True,
                                         api_name="/import_files")
    assert "Imported the set as run" in message, message
    run_id = message.split("`")[1]
    details, _, image = client.predict(run_id, api_name="/select_run")
    assert "Shown without the cifar10 dataset" in details and "whitened images" in details
    assert image is not None  # drawn offline
    torch.save([[[torch.ones(4)], [torch.zeros(4)]]] * 2, folder / "replay_buffer_0.pt")
    message, _, _, buffers = client.predict([gradio_client.handle_file(str(folder / "replay_buffer_0.pt"))],
                                            "cifar10", True, api_name="/import_files")
    assert "2 experts × 1 epochs × 4 parameters" in message
    assert "| replay_buffer_0.pt | 2 | 1 | 4 |" in buffers
