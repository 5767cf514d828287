"""Tests for seqmatch_engine.storage.files (atomic files, safetensors) and seqmatch_engine.storage.runs (RunFolder).

Most run-folder tests build a folder by hand; one module-scoped fixture prepares the bundled
Fashion-MNIST subset once so that a tiny real Distiller run (width-8 net, one 3-epoch expert,
3 outer iterations) can be stopped, resumed and exported.
"""

from __future__ import annotations

import errno
import json
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from PIL import Image
from safetensors import safe_open

from seqmatch_engine.core import paths
from seqmatch_engine.core.config import RunConfig, load_preset
from seqmatch_engine.data.prepare import PixelTransform, prepare_data
from seqmatch_engine.orchestration.driver import Distiller, RunControl, StopRequested
from seqmatch_engine.storage import files as storage
from seqmatch_engine.storage import runs
from seqmatch_engine.storage.export import export_set
from seqmatch_engine.storage.files import (
    StorageError,
    append_jsonl,
    read_json,
    read_jsonl,
    read_tensors,
    write_json,
    write_tensors,
)
from seqmatch_engine.storage.records import (
    Checkpoint,
    EvalResult,
    IterationRecord,
    RunState,
    RunStatus,
    SelectionRecord,
    metric_from_dict,
)
from seqmatch_engine.storage.runs import RunError, RunFolder, Subset, list_runs


def tiny_config(**distill: object) -> RunConfig:
    """A one-subset config small enough for a CPU test (distill settings can be overridden)."""
    return RunConfig.from_dict({
        "name": "tiny",
        "device": "cpu",
        "data": {"train_per_class": 20, "val_per_class": 5},
        "model": {"width": 8},
        "experts": {"num_experts": 1, "epochs": 3, "stage_epochs": 3},
        "distill": {"subsets": [{"ipc": 1, "interval": [0, 3], "iterations": 3}], "syn_steps": 2,
                    "select_every": 0, "snapshot_every": 1, "lr_lr": 1e-7, **distill},
        "eval": {"epochs": 1, "num_nets": 1},
    })


def preset_config() -> RunConfig:
    return RunConfig.from_dict(load_preset("cpu-demo"))


def leftovers(folder: Path) -> list[str]:
    """Names of temporary files the atomic writer may have left in `folder`."""
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


def disk_full(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def permission_denied(*args, **kwargs):
    raise OSError(errno.EACCES, "Permission denied")


pytestmark = pytest.mark.usefixtures("isolated_home")


@pytest.fixture
def stamps(monkeypatch):
    """Make RunFolder.create use the given timestamps in turn (only the runs module sees this clock)."""
    def use(*values: str) -> None:
        queue = iter(values)
        monkeypatch.setattr(runs, "time", SimpleNamespace(strftime=lambda fmt: next(queue), time=time.time))
    return use


# ============================================================================ storage


def test_write_json_round_trip(tmp_path):
    path = tmp_path / "deep" / "er" / "f.json"
    write_json(path, {"b": [1, 2.5, None], "a": "x"})
    assert read_json(path) == {"a": "x", "b": [1, 2.5, None]}
    text = path.read_text()
    assert text.endswith("\n") and text.index('"a"') < text.index('"b"')  # sorted keys, one trailing newline
    assert leftovers(path.parent) == []


@pytest.mark.parametrize("failing", ["replace", "fsync"])
def test_write_json_on_a_full_disk_keeps_the_old_file(tmp_path, monkeypatch, failing):
    path = tmp_path / "status.json"
    write_json(path, {"version": 1})
    monkeypatch.setattr(storage.os, failing, disk_full)
    with pytest.raises(StorageError) as info:
        write_json(path, {"version": 2})
    message = str(info.value)
    assert message.startswith(f"disk full while writing {path}: free some space")
    assert "the previous version of the file is intact" in message
    assert isinstance(info.value.__cause__, OSError) and info.value.__cause__.errno == errno.ENOSPC
    monkeypatch.undo()
    assert read_json(path) == {"version": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["status.json"]


@pytest.mark.parametrize("failing", ["replace", "fsync"])
def test_write_tensors_on_a_full_disk_keeps_the_old_file(tmp_path, monkeypatch, failing):
    path = tmp_path / "x.safetensors"
    write_tensors(path, {"a": torch.arange(3)})
    monkeypatch.setattr(storage.os, failing, disk_full)
    with pytest.raises(StorageError, match=r"^disk full while writing .*x\.safetensors"):
        write_tensors(path, {"a": torch.zeros(5)})
    monkeypatch.undo()
    assert torch.equal(read_tensors(path)["a"], torch.arange(3))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.safetensors"]


def test_failed_first_write_leaves_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(storage.os, "replace", disk_full)
    with pytest.raises(StorageError):
        write_json(tmp_path / "new.json", {"a": 1})
    assert list(tmp_path.iterdir()) == []


def test_other_write_errors_are_reported_without_disk_full(tmp_path, monkeypatch):
    path = tmp_path / "f.json"
    write_json(path, [1])
    monkeypatch.setattr(storage.os, "replace", permission_denied)
    with pytest.raises(StorageError) as info:
        write_json(path, [2])
    assert str(info.value) == f"could not write {path}: Permission denied"
    monkeypatch.undo()
    assert read_json(path) == [1]
    assert leftovers(tmp_path) == []


def test_storage_error_is_an_os_error():
    assert issubclass(StorageError, OSError)


def test_write_tensors_round_trip(tmp_path):
    path = tmp_path / "t.safetensors"
    matrix = torch.arange(6, dtype=torch.float32).view(2, 3)
    write_tensors(path, {"m": matrix.T, "labels": torch.tensor([3, 1], dtype=torch.int64),
                         "flag": torch.tensor(True)}, metadata={"info": "hello"})
    loaded = read_tensors(path, ("m", "labels"))
    assert torch.equal(loaded["m"], matrix.T)  # a non-contiguous tensor is saved as its values
    assert loaded["labels"].dtype == torch.int64 and loaded["labels"].tolist() == [3, 1]
    assert bool(loaded["flag"]) is True
    with safe_open(str(path), "pt") as handle:
        assert handle.metadata() == {"info": "hello"}


def test_read_tensors_of_a_missing_file_names_it(tmp_path):
    path = tmp_path / "nope.safetensors"
    with pytest.raises(StorageError) as info:
        read_tensors(path)
    assert str(info.value) == f"{path} does not exist"


@pytest.mark.parametrize("content", [b"abc", b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}xxxxxx",
                                     bytes(range(256)) * 4])
def test_read_tensors_of_a_corrupt_file_names_it(tmp_path, content):
    path = tmp_path / "bad.safetensors"
    path.write_bytes(content)
    with pytest.raises(StorageError) as info:
        read_tensors(path)
    message = str(info.value)
    assert message.startswith(f"{path} is not a readable safetensors file (")
    assert message.endswith("it is damaged or was not written by this tool")


def test_read_tensors_of_a_truncated_file_names_it(tmp_path):
    path = tmp_path / "cut.safetensors"
    write_tensors(path, {"a": torch.zeros(100)})
    path.write_bytes(path.read_bytes()[:-50])
    with pytest.raises(StorageError, match="is not a readable safetensors file"):
        read_tensors(path)


def test_read_tensors_checks_required_keys(tmp_path):
    path = tmp_path / "t.safetensors"
    write_tensors(path, {"images": torch.zeros(1)})
    with pytest.raises(StorageError) as info:
        read_tensors(path, ("images", "labels", "lr"))
    assert str(info.value) == f"{path} lacks labels, lr: it is not a file of this kind"


def test_read_json_of_a_damaged_file_names_it(tmp_path):
    path = tmp_path / "status.json"
    path.write_text('{"state": "run')
    with pytest.raises(StorageError) as info:
        read_json(path)
    assert str(info.value).startswith(f"{path} is not valid JSON (")


def test_read_jsonl_skips_a_torn_last_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    append_jsonl(path, {"iteration": 1})
    append_jsonl(path, {"iteration": 2})
    with open(path, "a") as handle:
        handle.write('{"iteration": 3, "lo')  # killed mid-write
    assert read_jsonl(path) == [{"iteration": 1}, {"iteration": 2}]


def test_read_jsonl_of_a_missing_file_is_empty(tmp_path):
    assert read_jsonl(tmp_path / "none.jsonl") == []


def test_append_after_a_torn_line_keeps_the_new_record(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"iteration": 1}\n{"iteration": 2, "lo')
    append_jsonl(path, {"iteration": 2})
    assert read_jsonl(path) == [{"iteration": 1}, {"iteration": 2}]


def test_appends_write_one_line_per_record(tmp_path):
    path = tmp_path / "metrics.jsonl"
    for i in range(3):
        append_jsonl(path, {"iteration": i})
    assert path.read_text() == "".join(f'{{"iteration": {i}}}\n' for i in range(3))


# ============================================================================ RunFolder basics


def test_create_writes_config_and_a_created_status(tmp_path):
    config = preset_config()
    run = RunFolder.create(tmp_path / "runs", config)
    assert run.path.parent == tmp_path / "runs"
    assert run.id == run.path.name
    assert run.id.endswith("-seqmatch-cpu-demo") and len(run.id) == len("20260101-120000-seqmatch-cpu-demo")
    assert run.config() == config
    status = run.status()
    assert (status.state, status.phase) == ("created", "queued")
    assert status.created <= status.updated <= time.time()
    assert sorted(p.name for p in run.path.iterdir()) == ["config.json", "status.json"]


def test_create_names_static_runs_and_slugs_names(tmp_path, stamps):
    stamps("20260101-120000", "20260101-120001", "20260101-120002")
    static = RunConfig.from_dict({**tiny_config().to_dict(), "name": "my run/ä 1"})
    assert RunFolder.create(tmp_path, static).id == "20260101-120000-mtt-my-run-1"
    unnamed = RunConfig.from_dict({**tiny_config().to_dict(), "name": ""})
    assert RunFolder.create(tmp_path, unnamed).id == "20260101-120001-mtt"
    long = RunConfig.from_dict({**tiny_config().to_dict(), "name": "x" * 100})
    assert RunFolder.create(tmp_path, long).id == "20260101-120002-mtt-" + "x" * 40


def test_create_in_the_same_second_makes_distinct_folders(tmp_path, stamps):
    stamps(*["20260101-120000"] * 3)
    ids = [RunFolder.create(tmp_path, preset_config()).id for _ in range(3)]
    base = "20260101-120000-seqmatch-cpu-demo"
    assert ids == [base, f"{base}-1", f"{base}-2"]


def test_find_a_run_and_a_non_run(tmp_path):
    run = RunFolder.create(tmp_path / "runs", preset_config())
    assert RunFolder.find(tmp_path / "runs", run.id).config() == run.config()
    (tmp_path / "runs" / "plain").mkdir()
    with pytest.raises(RunError) as info:
        RunFolder.find(tmp_path / "runs", "plain")
    assert str(info.value) == (f"no run 'plain' in {(tmp_path / 'runs').resolve()}: it was deleted or never existed; "
                               f"refresh the list of runs")
    with pytest.raises(RunError, match="never existed"):
        RunFolder.find(tmp_path / "runs", "does-not-exist")


def test_update_status_merges_fields(tmp_path):
    run = RunFolder.create(tmp_path, preset_config())
    first = run.update_status(state="running", phase="experts 1", stage=0)
    second = run.update_status(iteration=5, phase="distilling S1")
    assert second.updated >= first.updated
    status = run.status()
    assert status == second
    assert (status.state, status.phase, status.stage, status.iteration) == \
        ("running", "distilling S1", 0, 5)
    assert status.created > 0


def test_messages_accumulate(tmp_path):
    run = RunFolder.create(tmp_path, preset_config())
    run.add_message("info", "first")
    run.update_status(phase="other")
    run.add_message("warning", "second")
    messages = run.status().messages
    assert [(m.level, m.text) for m in messages] == [("info", "first"), ("warning", "second")]
    assert messages[0].time <= messages[1].time
    assert run.status().phase == "other"


def test_status_of_a_folder_without_status_file_is_the_default(tmp_path):
    run = RunFolder.create(tmp_path, preset_config())
    (run.path / paths.STATUS_FILE).unlink()
    assert run.status() == RunStatus()


def test_metrics_and_truncation(tmp_path):
    run = RunFolder.create(tmp_path, preset_config())
    records = [IterationRecord(s, i, 0.5, 0.01, 3, 1, 0.2) for s in (0, 1, 2) for i in (1, 2, 3)]
    records.insert(4, SelectionRecord(1, 0, 0.7, True))
    for record in records:
        run.log(record)
    assert run.metrics() == records
    run.truncate_metrics(1, 2)
    kept = [(r.stage, r.iteration) for r in run.metrics()]
    assert kept == [(0, 1), (0, 2), (0, 3), (1, 1), (1, 0), (1, 2)]
    run.log(IterationRecord(1, 3, 0.4, 0.01, 2))
    assert [(r.stage, r.iteration) for r in run.metrics()][-1] == (1, 3)
    run.truncate_metrics(0, 0)
    assert run.metrics() == []


def test_metrics_records_keep_their_file_format_and_refuse_what_is_not_a_record(tmp_path):
    """metrics.jsonl's lines are what they always were (kind first, then the fields in order), so runs written
    before the records were typed still read; a line of an unknown kind is an error naming the file and the fix."""
    run = RunFolder.create(tmp_path, preset_config())
    run.log(IterationRecord(0, 1, 0.5, 0.01, 3, 2, 0.25))
    run.log(SelectionRecord(0, 1, 0.75, False))
    lines = (run.path / paths.METRICS_FILE).read_text().splitlines()
    assert lines == ['{"kind": "iteration", "stage": 0, "iteration": 1, "loss": 0.5, "lr": 0.01, "start_epoch": 3, '
                     '"expert": 2, "seconds": 0.25}',
                     '{"kind": "selection", "stage": 0, "iteration": 1, "val_accuracy": 0.75, "best": false}']
    older = {"kind": "iteration", "stage": 0, "iteration": 2, "loss": 0.4, "lr": 0.01, "start_epoch": 1}
    assert metric_from_dict(older) == IterationRecord(0, 2, 0.4, 0.01, 1, None, None)
    with (run.path / paths.METRICS_FILE).open("a") as handle:
        handle.write('{"kind": "evaluation", "stage": 0}\n')
    with pytest.raises(storage.StorageError, match="metrics.jsonl holds a line that is not a metrics record.*"
                                                   "unknown record kind 'evaluation'.*Delete that line"):
        run.metrics()


def test_save_subset_and_subsets_round_trip(tmp_path):
    run = RunFolder.create(tmp_path, preset_config())
    images = torch.randn(4, 1, 28, 28)
    run.save_subset(0, Subset(images, torch.tensor([0, 0, 1, 1], dtype=torch.int32), 0.0125))
    run.save_subset(1, Subset(images * 2, torch.tensor([0, 1]), 0.5))
    run.save_subset(3, Subset(images, torch.tensor([0, 1]), 0.5))  # S4 without S3: ignored
    subsets = run.subsets()
    assert len(subsets) == 2
    assert torch.equal(subsets[0].images, images)
    assert subsets[0].labels.dtype == torch.int64 and subsets[0].labels.tolist() == [0, 0, 1, 1]
    assert isinstance(subsets[0].lr, float) and subsets[0].lr == pytest.approx(0.0125)
    assert subsets[1].lr == 0.5 and torch.equal(subsets[1].images, images * 2)


def test_a_damaged_subset_file_is_reported(tmp_path):
    run = RunFolder.create(tmp_path, preset_config())
    path = paths.subset_file(run.path, 0)
    write_tensors(path, {"images": torch.zeros(1)})
    with pytest.raises(StorageError, match="lacks labels, lr"):
        run.subsets()


def test_snapshots_are_listed_in_order(tmp_path):
    run = RunFolder.create(tmp_path, preset_config())
    assert run.snapshots() == []
    for stage, iteration in [(1, 10), (0, 20), (0, 5), (1, 2), (0, 100)]:
        run.save_snapshot(stage, iteration, torch.zeros(2, 1, 4, 4), 0.01)
    assert run.snapshots() == [(0, 5), (0, 20), (0, 100), (1, 2), (1, 10)]
    assert paths.snapshot_file(run.path, 0, 5) == run.path / "snapshots" / "S1_000005.safetensors"
    assert float(read_tensors(paths.snapshot_file(run.path, 1, 10), ("images", "lr"))["lr"]) == pytest.approx(0.01)
    assert torch.equal(run.snapshot_images(1, 10), torch.zeros(2, 1, 4, 4))


def test_checkpoint_round_trip(tmp_path):
    run = RunFolder.create(tmp_path, preset_config())
    assert run.checkpoint() is None
    state = {"images": torch.ones(2, 3), "lr": torch.tensor(0.1), "labels": torch.randn(2, 10),
             "image_momentum": torch.full((2, 3), 0.5), "label_momentum": torch.full((2, 10), 0.25)}
    saved = Checkpoint(1, 7, state, torch.Generator().get_state(), 0.7, 4, torch.zeros(2, 3), 0.09, torch.ones(2, 10))
    run.save_checkpoint(saved)
    loaded = run.checkpoint()
    assert loaded.state.keys() == state.keys() and all(torch.equal(loaded.state[k], v) for k, v in state.items())
    assert torch.equal(loaded.images, torch.ones(2, 3)) and torch.equal(loaded.best_labels, torch.ones(2, 10))
    assert (loaded.stage, loaded.iteration, loaded.best_accuracy, loaded.best_iteration) == (1, 7, 0.7, 4)
    assert loaded.lr == pytest.approx(0.1) and loaded.best_lr == pytest.approx(0.09)
    # a checkpoint written before methods owned their labels (no labels, no best_labels) still reads
    old = {"images": torch.ones(2, 3), "lr": torch.tensor(0.1), "generator": torch.Generator().get_state(),
           "best_images": torch.zeros(2, 3), "image_momentum": torch.full((2, 3), 0.5)}
    write_tensors(run.path / "checkpoint.safetensors", old, metadata={"info": json.dumps(saved.info())})
    loaded = run.checkpoint()
    assert loaded.best_labels is None and set(loaded.state) == {"images", "lr", "image_momentum"}
    write_tensors(run.path / "checkpoint.safetensors", {"images": torch.ones(2, 3)}, metadata={"info": "{}"})
    with pytest.raises(StorageError, match="lacks lr, generator, best_images"):
        run.checkpoint()
    run.clear_checkpoint()
    assert run.checkpoint() is None
    run.clear_checkpoint()  # clearing twice is fine


def test_eval_round_trip(tmp_path):
    run = RunFolder.create(tmp_path, preset_config())
    assert run.eval() is None
    result = EvalResult("seqmatch", 10, [0.01, 0.02], 300, 5, None, [1])
    result.add("synthetic", "convnet", {"mean": 0.8, "std": 0.01, "values": [0.79, 0.81]})
    run.save_eval(result)
    assert run.eval() == result and run.eval().accuracy()["mean"] == 0.8 and run.eval().accuracy("random_real") is None
    assert json.loads((run.path / "eval.json").read_text())["synthetic"]["convnet"]["values"] == [0.79, 0.81]
    write_json(run.path / "eval.json", {"method": "mtt"})
    with pytest.raises(StorageError, match="eval.json lacks 'ipc'"):
        run.eval()


def test_transform_round_trip_with_zca(tmp_path):
    run = RunFolder.create(tmp_path, preset_config())
    plain = PixelTransform(torch.tensor([0.5]), torch.tensor([0.25]))
    run.save_transform(plain)
    loaded = run.transform()
    assert torch.equal(loaded.mean, plain.mean) and loaded.zca_matrix is None
    d = 4
    zca = PixelTransform(torch.tensor([0.5]), torch.tensor([0.25]), torch.arange(d).float(), torch.eye(d) * 2,
                         torch.eye(d) / 2)
    run.save_transform(zca)
    loaded = run.transform()
    assert torch.equal(loaded.zca_matrix, torch.eye(d) * 2) and torch.equal(loaded.zca_mean, torch.arange(d).float())


def test_delete_removes_the_folder(tmp_path):
    run = RunFolder.create(tmp_path, preset_config())
    run.delete()
    assert not run.path.exists()


# ============================================================================ export, list_runs


def hand_built_run(root: Path) -> RunFolder:
    """A run with a transform and two finished subsets of 10 classes (1 and 2 images per class)."""
    run = RunFolder.create(root, preset_config())
    run.save_transform(PixelTransform(torch.tensor([0.5]), torch.tensor([0.25])))
    generator = torch.Generator().manual_seed(0)
    run.save_subset(0, Subset(torch.randn(10, 1, 28, 28, generator=generator), torch.arange(10), 0.02))
    run.save_subset(1, Subset(torch.randn(20, 1, 28, 28, generator=generator),
                              torch.arange(10).repeat_interleave(2), 0.03))
    return run


def test_export_writes_tensors_and_grids(tmp_path):
    run = hand_built_run(tmp_path / "runs")
    exported = export_set(run)
    folder = exported.folder
    assert folder == run.path / "export" and not exported.partial and exported.describe() == f"exported to {folder}"
    assert sorted(p.name for p in folder.iterdir()) == ["S1.png", "S2.png", "distilled_set.safetensors"]
    tensors = read_tensors(folder / "distilled_set.safetensors")
    subsets = run.subsets()
    for k, subset in enumerate(subsets, start=1):
        assert torch.equal(tensors[f"S{k}.images"], subset.images)
        assert torch.equal(tensors[f"S{k}.labels"], subset.labels)
        assert float(tensors[f"S{k}.lr"]) == pytest.approx(subset.lr)
        assert torch.allclose(tensors[f"S{k}.pixels"], (subset.images * 0.25 + 0.5).clamp(0, 1))
    with safe_open(str(folder / "distilled_set.safetensors"), "pt") as handle:
        metadata = handle.metadata()
    assert (metadata["subsets"], metadata["subsets_of_run"], metadata["partial"]) == ("2", "2", "false")
    assert RunConfig.from_dict(json.loads(metadata["config"])) == run.config()
    # one row per class (28 px + 1 px padding, x4), one column per image, class names on the left, a title on top
    import numpy as np

    for name, columns in (("S1.png", 1), ("S2.png", 2)):
        image = Image.open(folder / name)
        assert image.mode == "RGB" and image.size[1] > 4 * (10 * 29 + 1) and image.size[0] > 4 * (columns * 29 + 1)
        names_margin = np.asarray(image)[image.size[1] // 2:, : image.size[0] - 4 * (columns * 29 + 1) - 8]
        assert (names_margin < 128).any(), "the class names are written left of the grid"
    assert leftovers(folder) == []


def test_export_to_a_chosen_folder(tmp_path):
    run = hand_built_run(tmp_path / "runs")
    destination = tmp_path / "out" / "set"
    assert export_set(run, destination).folder == destination
    assert (destination / "distilled_set.safetensors").is_file()
    assert not (run.path / "export").exists()


def test_export_without_subsets_is_refused(tmp_path):
    run = RunFolder.create(tmp_path, preset_config())
    with pytest.raises(RunError) as info:
        export_set(run, partial=True)
    assert str(info.value) == f"run {run.id} has no finished subset to export yet; it is interrupted"
    assert not (run.path / "export").exists()


def test_list_runs_newest_first(tmp_path, stamps):
    root = tmp_path / "runs"
    stamps("20260101-120000", "20260102-090000", "20260101-130000")
    created = [RunFolder.create(root, preset_config()) for _ in range(3)]
    (root / "not-a-run").mkdir()
    (root / "stray.txt").write_text("x")
    listed = [r.id for r in list_runs(root)]
    assert listed == [created[1].id, created[2].id, created[0].id]


def test_list_runs_defaults_to_seqmatch_home(tmp_path, monkeypatch):
    monkeypatch.setenv("SEQMATCH_HOME", str(tmp_path / "home"))
    assert list_runs() == []  # no runs folder yet
    run = RunFolder.create(paths.runs_root(), preset_config())
    assert run.path.parent == tmp_path / "home" / "runs"
    assert [r.path for r in list_runs()] == [run.path]


# ============================================================================ RunControl


def test_run_control_flags():
    control = RunControl()
    assert not control.paused and not control.stopping
    control.checkpoint()  # running: returns at once
    control.pause()
    assert control.paused
    control.resume()
    assert not control.paused
    control.pause()
    control.stop()
    assert control.stopping and not control.paused  # stop releases a paused loop
    with pytest.raises(StopRequested):
        control.checkpoint()


def test_run_control_blocks_while_paused():
    control = RunControl()
    control.pause()
    passed = threading.Event()

    def loop() -> None:
        control.checkpoint()
        passed.set()

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    assert not passed.wait(0.2), "checkpoint() must block while paused"
    control.resume()
    assert passed.wait(5)
    thread.join(5)


# ============================================================================ a real tiny run


@pytest.fixture(scope="module")
def data():
    return prepare_data(tiny_config().data, 0, torch.device("cpu"))


@pytest.fixture(scope="module")
def experts_root(tmp_path_factory):
    return tmp_path_factory.mktemp("experts")


def test_stopped_run_resumes_and_exports(tmp_path, data, experts_root):
    config = tiny_config()
    run = RunFolder.create(tmp_path / "runs", config)
    control = RunControl()
    events = []

    def observer(event) -> None:
        events.append(event)
        if event.kind == "iteration" and event.iteration == 1:
            control.stop()

    assert Distiller(run, experts_root, observer, control, data).run() is None
    status = run.status()
    assert (status.state, status.phase) == ("stopped", "stopped")
    assert run.subsets() == []
    assert run.snapshots() == [(0, 0), (0, 1)]
    assert run.checkpoint().iteration == 1
    assert [e.data["name"] for e in events if e.kind == "phase"][-1] == "stopped"
    with run.path.joinpath(paths.METRICS_FILE).open("a") as handle:
        handle.write('{"kind": "iteration", "stage": 0, "iteration": 2, "lo')  # torn by a kill

    result = Distiller(run, experts_root, data=data).run()
    assert result is not None and result == run.eval().to_dict()
    assert (result["method"], result["ipc"], result["num_nets"]) == ("mtt", 1, 1)
    status = run.status()
    assert status.state == "done"
    assert [m.text for m in status.messages] == ["resumed S1 at iteration 1 of 3"]
    assert [r.iteration for r in run.metrics() if isinstance(r, IterationRecord)] == [1, 2, 3]
    assert run.snapshots() == [(0, 0), (0, 1), (0, 2), (0, 3)]
    assert run.checkpoint() is None
    (subset,) = run.subsets()
    assert tuple(subset.images.shape) == (10, 1, 28, 28)
    assert subset.labels.tolist() == list(range(10))
    assert subset.lr == pytest.approx(result["lrs"][0])
    final = read_tensors(paths.snapshot_file(run.path, 0, 3), ("images", "lr"))
    assert torch.equal(final["images"], subset.images)  # select_every 0: the last images are kept

    folder = export_set(run).folder
    assert sorted(p.name for p in folder.iterdir()) == ["S1.png", "distilled_set.safetensors"]
    assert torch.equal(read_tensors(folder / "distilled_set.safetensors")["S1.images"], subset.images)

    # An uninterrupted run of the same config ends with the very same subset.
    again = RunFolder.create(tmp_path / "runs", config)
    Distiller(again, experts_root, data=data).run()
    assert torch.equal(again.subsets()[0].images, subset.images)
    assert again.subsets()[0].lr == subset.lr


def test_resume_before_the_first_checkpoint_does_not_duplicate_metrics(tmp_path, data, experts_root):
    run = RunFolder.create(tmp_path / "runs", tiny_config(snapshot_every=10))
    control = RunControl()

    def observer(event) -> None:
        if event.kind == "iteration" and event.iteration == 1:
            control.stop()

    assert Distiller(run, experts_root, observer, control, data).run() is None
    assert run.checkpoint() is None  # stopped before the first snapshot
    Distiller(run, experts_root, data=data).run()
    assert [r.iteration for r in run.metrics() if isinstance(r, IterationRecord)] == [1, 2, 3]


def test_a_packed_run_travels_and_installs_exactly_refusing_paths_outside(tmp_path):
    run = RunFolder.create(tmp_path / "runs", tiny_config(), "a")
    run.save_snapshot(0, 0, torch.zeros(2, 1, 4, 4), 0.1)
    packed = run.pack()
    assert set(packed) == {"config.json", "status.json", "snapshots/S1_000000.safetensors"}
    copy = RunFolder.unpack(tmp_path / "scratch", "a", packed)
    assert copy.pack() == packed and copy.config() == run.config()
    copy.update_status(state="done")
    (copy.path / "eval.json").write_text("{}")
    copy.clear_checkpoint()
    (run.path / "checkpoint.safetensors").write_bytes(b"old")  # gone from the returned set: removed on install
    run.install(copy.pack())
    assert run.pack() == copy.pack() and run.status().state == "done"
    for hostile in ("../outside.json", "/etc/evil", "snapshots/../../x"):
        with pytest.raises(RunError, match="not a path inside the run folder"):
            run.install({**packed, hostile: b"x"})
    assert not (tmp_path / "runs" / "outside.json").exists() and not (tmp_path / "x").exists()
    with pytest.raises(paths.UnsafeName):
        RunFolder.unpack(tmp_path / "scratch", "../b", packed)


def test_status_is_typed_unknown_fields_are_refused_and_older_files_read(tmp_path):
    run = RunFolder.create(tmp_path, preset_config())
    with pytest.raises(ValueError, match="RunStatus has no field stagee; its fields: .*stage"):
        run.update_status(stagee=1)
    status = run.update_status(state="running", stage=1, iteration=3)
    assert status.state is RunState.RUNNING and status.on_disk is RunState.INTERRUPTED
    written = json.loads((run.path / paths.STATUS_FILE).read_text())
    assert (written["state"], written["stage"], written["iteration"]) == ("running", 1, 3)
    written["eta"] = 12.0  # a key an older version wrote
    (run.path / paths.STATUS_FILE).write_text(json.dumps(written))
    assert run.status().stage == 1 and not hasattr(run.status(), "eta")
    (run.path / paths.STATUS_FILE).write_text(json.dumps({"state": "sleeping"}))
    with pytest.raises(StorageError, match="status.json cannot be read .*'sleeping' is not a valid RunState.*Delete"):
        run.status()
