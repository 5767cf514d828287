"""Tests for seqmatch_engine.interfaces.cli: argument handling, exit codes, and a tiny run end to end.

Everything runs in-process through `cli.main([...])` (plus one subprocess check of
`python -m seqmatch_engine`) with --home / SEQMATCH_HOME inside pytest's tmp folders.
The distillation configs are tiny (200 real images, width-8 nets, 1 expert, 2 iterations
per subset, 2 evaluation epochs) so the whole module runs in seconds on a CPU.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors import safe_open

from seqmatch_engine.core import paths
from seqmatch_engine.core.config import RunConfig, load_preset
from seqmatch_engine.interfaces import cli
from seqmatch_engine.orchestration import driver as seqmatch
from seqmatch_engine.storage.files import read_tensors
from seqmatch_engine.storage.records import IterationRecord, SelectionRecord
from seqmatch_engine.storage.runs import RunFolder, list_runs

TWO_SUBSETS = [
    {"ipc": 1, "interval": [0, 3], "iterations": 2},
    {"ipc": 1, "interval": [0, 3], "iterations": 2},
]
TINY = [
    "device=cpu",
    "data.train_per_class=20",
    "data.val_per_class=5",
    "model.width=8",
    "experts.num_experts=1",
    "experts.epochs=3",
    "experts.stage_epochs=3",
    f"distill.subsets={json.dumps(TWO_SUBSETS)}",
    "distill.syn_steps=2",
    "distill.select_every=0",
    "distill.select_points=0",
    "eval.epochs=1",
    "eval.num_nets=1",
]


def tiny_args(*extra: str) -> list[str]:
    """`--set` arguments of the tiny config, plus `extra` overrides (later ones win)."""
    args: list[str] = []
    for item in (*TINY, *extra):
        args += ["--set", item]
    return args


def run_main(argv: list[str]) -> tuple[int, str, str]:
    """cli.main(argv) with stdout/stderr captured (for module-scoped fixtures, where capsys is unavailable)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = cli.main(argv)
    return rc, out.getvalue(), err.getvalue()


def only_run(home: Path) -> RunFolder:
    runs = sorted(p for p in (home / "runs").iterdir() if p.is_dir())
    assert len(runs) == 1, runs
    return RunFolder(runs[0])


def preset_files() -> list[str]:
    return sorted(p.stem for p in paths.PRESETS_DIR.glob("*.json"))


def copy_home(source: Path, destination: Path, runs: bool = True) -> Path:
    """A private copy of a home (so tests that change a run do not affect each other)."""
    shutil.copytree(source / "experts", destination / "experts")
    if runs:
        shutil.copytree(source / "runs", destination / "runs")
    return destination


pytestmark = pytest.mark.usefixtures("isolated_home")


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """One tiny two-subset SeqMatch run done through the CLI: (home, rc, stdout, stderr)."""
    home = tmp_path_factory.mktemp("home")
    rc, out, err = run_main(["--home", str(home), "distill", *tiny_args("name=tiny")])
    return home, rc, out, err


# ----------------------------------------------------------------------------- presets, argv


def test_presets_as_a_subprocess_module(tmp_path):
    env = {**os.environ, "SEQMATCH_HOME": str(tmp_path), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "seqmatch_engine", "presets"], cwd=paths.REPO_DIR, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == preset_files()
    assert "cpu-demo" in proc.stdout.splitlines()
    assert not (tmp_path / "runs").exists()


def test_presets_in_process(capsys):
    assert cli.main(["presets"]) == 0
    assert capsys.readouterr().out.splitlines() == preset_files()


def test_missing_command_is_an_argparse_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main([])
    assert exit_info.value.code == 2
    assert "command" in capsys.readouterr().err


def test_runs_on_an_empty_home_prints_nothing(tmp_path, capsys):
    assert cli.main(["--home", str(tmp_path / "empty"), "runs"]) == 0
    assert capsys.readouterr().out == ""


def test_default_home_comes_from_seqmatch_home(tmp_path, monkeypatch, capsys):
    home = tmp_path / "from-env"
    monkeypatch.setenv("SEQMATCH_HOME", str(home))
    config = RunConfig.from_dict(load_preset("cpu-demo"))
    run = RunFolder.create(home / "runs", config)
    assert cli.main(["runs"]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith(run.id)
    assert line.split()[1:3] == ["interrupted", "queued"]  # nothing runs it: resumable, as the app says


# ----------------------------------------------------------------------------- config errors -> exit 2


def test_bad_override_key_exits_2_naming_the_field(tmp_path, capsys):
    home = tmp_path / "home"
    rc = cli.main(["--home", str(home), "distill", "--set", "distill.syn_stepz=20"])
    assert rc == 2
    captured = capsys.readouterr()
    assert captured.err.startswith("error: distill.syn_stepz: unknown setting")
    assert "syn_steps" in captured.err  # the known settings are listed
    assert captured.out == ""
    assert not (home / "runs").exists(), "no run folder may be created for an invalid config"


def test_bad_override_value_exits_2(tmp_path, capsys):
    rc = cli.main(["--home", str(tmp_path), "distill", "--set", "model.width=0"])
    assert rc == 2
    assert "error: model.width: must be >= 1" in capsys.readouterr().err


@pytest.mark.parametrize("override, message", [
    ("distill.syn_steps=2.7", "distill.syn_steps: expected a whole number, got 2.7"),
    ('seed="2"', 'seed: expected a whole number, got "2"'),
    ("model.width=true", "model.width: expected a whole number, got true"),
    ("data.train_per_class=20.0", "data.train_per_class: expected a whole number, got 20.0"),
    ("eval.num_nets=1000000000", "eval.num_nets: must be from 1 to 100, got 1000000000"),
])
def test_overrides_are_never_coerced(override, message, tmp_path, capsys):
    assert cli.main(["--home", str(tmp_path), "distill", "--set", override]) == 2
    assert capsys.readouterr().err.strip() == f"error: {message}"
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("option, value", [("--nets", "1000000000"), ("--nets", "0"), ("--epochs", "2.5")])
def test_evaluate_options_are_bounded_whole_numbers(option, value, capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["evaluate", "some-run", option, value])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {option}: expected a whole number from 1 to " in err and value in err


def test_override_without_equals_sign_exits_2(tmp_path, capsys):
    rc = cli.main(["--home", str(tmp_path), "distill", "--set", "distill.syn_steps"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "error: override 'distill.syn_steps': expected key=value" in err


def test_unknown_preset_exits_2_listing_presets(tmp_path, capsys):
    rc = cli.main(["--home", str(tmp_path), "distill", "--preset", "nope"])
    assert rc == 2
    err = capsys.readouterr().err
    assert err.startswith("error: preset 'nope' not found")
    assert err.rstrip().endswith(f"available: {', '.join(preset_files())}")
    assert "cpu-demo" in err


def test_missing_config_file_exits_2_with_absolute_path(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    rc = cli.main(["--home", str(tmp_path), "distill", "--config", "missing.json"])
    assert rc == 2
    err = capsys.readouterr().err
    assert f"error: config file {tmp_path.resolve() / 'missing.json'} does not exist" in err


def test_config_file_with_an_impossible_value_exits_2(tmp_path, capsys):
    raw = load_preset("cpu-demo")
    raw["distill"]["momentum"] = 1.0
    config_file = tmp_path / "config.json"
    config_file.write_text(json.dumps(raw))
    rc = cli.main(["--home", str(tmp_path / "home"), "distill", "--config", str(config_file)])
    assert rc == 2
    assert "error: distill.momentum: must be in [0, 1)" in capsys.readouterr().err
    assert not (tmp_path / "home" / "runs").exists()


def test_config_that_is_a_folder_exits_2(tmp_path, capsys):
    rc = cli.main(["--home", str(tmp_path / "home"), "distill", "--config", str(tmp_path)])
    assert rc == 2
    assert str(tmp_path.resolve()) in capsys.readouterr().err


def test_resume_of_a_folder_that_is_not_a_run_exits_2(tmp_path, capsys):
    folder = tmp_path / "runs" / "not-a-run"
    folder.mkdir(parents=True)
    rc = cli.main(["--home", str(tmp_path), "distill", "--resume", str(folder)])
    assert rc == 2
    err = capsys.readouterr().err
    assert f"error: no run 'not-a-run' in {folder.parent.resolve()}: it was deleted or never existed" in err


def test_export_of_a_folder_that_is_not_a_run_exits_2(tmp_path, capsys):
    rc = cli.main(["export", str(tmp_path)])
    assert rc == 2
    assert "is not a run folder" in capsys.readouterr().err


def test_evaluate_of_an_unfinished_run_exits_2(tmp_path, capsys):
    config = RunConfig.from_dict(load_preset("cpu-demo"))
    run = RunFolder.create(tmp_path / "runs", config)
    rc = cli.main(["--home", str(tmp_path), "evaluate", str(run.path)])
    assert rc == 2
    err = capsys.readouterr().err
    assert f"error: run {run.id} has 0 of 2 subsets; finish it first" in err
    assert f"--resume {run.path}" in err


# ----------------------------------------------------------------------------- end to end


def test_distill_prints_the_accuracy_table(finished):
    home, rc, out, err = finished
    assert rc == 0, err
    run = only_run(home)
    result = json.loads((run.path / "eval.json").read_text())
    lines = out.splitlines()
    assert len(lines) == 3, out
    lrs = ", ".join(f"{x:.4g}" for x in result["lrs"])
    assert lines[0] == f"method seqmatch  IPC 2  learned lrs {lrs}"
    assert re.fullmatch(r"synthetic    convnet   +\d+\.\d\d ± 0\.00 %  \(1 nets\)", lines[1]), lines[1]
    assert re.fullmatch(r"random_real  convnet   +\d+\.\d\d ± 0\.00 %  \(1 nets\)", lines[2]), lines[2]
    assert f"{100 * result['synthetic']['convnet']['mean']:.2f}" in lines[1]
    assert f"{100 * result['random_real']['convnet']['mean']:.2f}" in lines[2]
    assert f"run folder: {run.path}" in err
    for phase in ("[loading data]", "[experts 1]", "[distilling S1]", "[experts 2]", "[distilling S2]",
                  "[evaluating]"):
        assert phase in err


def test_distill_leaves_a_complete_run_folder(finished):
    home, rc, _, _ = finished
    assert rc == 0
    run = only_run(home)
    assert re.fullmatch(r"\d{8}-\d{6}-seqmatch-tiny", run.id), run.id
    assert run.status().state == "done"
    assert run.status().phase == "done"
    assert run.checkpoint() is None
    subsets = run.subsets()
    assert [tuple(s.images.shape) for s in subsets] == [(10, 1, 28, 28), (10, 1, 28, 28)]
    assert torch.equal(subsets[1].labels, torch.arange(10))
    assert run.snapshots() == [(0, 0), (0, 2), (1, 0), (1, 2)]  # each stage from its images before any step
    iterations = [(r.stage, r.iteration) for r in run.metrics() if isinstance(r, IterationRecord)]
    assert iterations == [(0, 1), (0, 2), (1, 1), (1, 2)]
    experts = {p.name for p in (home / "experts").iterdir()}
    assert len(experts) == 3 and "evaluations" in experts  # stage-1 and retrained stage-2 experts, accuracies


def test_runs_lists_the_finished_run(finished, capsys):
    home, rc, _, _ = finished
    assert rc == 0
    run = only_run(home)
    assert cli.main(["--home", str(home), "runs"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1
    accuracy = json.loads((run.path / "eval.json").read_text())["synthetic"]["convnet"]["mean"]
    fields = lines[0].split()
    assert fields[0] == run.id
    assert fields[1:3] == ["done", "done"]
    assert fields[3:] == [f"{100 * accuracy:.2f}", "%"]


def test_export_writes_the_distilled_set(finished, tmp_path, capsys):
    home, rc, _, _ = finished
    assert rc == 0
    run = only_run(home)
    out = tmp_path / "exported"
    assert cli.main(["--home", str(home), "export", str(run.path), "--out", str(out)]) == 0
    assert capsys.readouterr().out.strip() == f"exported to {out}"
    assert sorted(p.name for p in out.iterdir()) == ["S1.png", "S2.png", "distilled_set.safetensors"]
    tensors = read_tensors(out / "distilled_set.safetensors")
    assert sorted(tensors) == sorted(f"S{k}.{n}" for k in (1, 2) for n in ("images", "labels", "lr", "pixels"))
    subsets = run.subsets()
    assert torch.equal(tensors["S2.images"], subsets[1].images)
    assert float(tensors["S1.lr"]) == pytest.approx(subsets[0].lr)
    assert 0 <= float(tensors["S1.pixels"].min()) and float(tensors["S1.pixels"].max()) <= 1
    with safe_open(str(out / "distilled_set.safetensors"), "pt") as handle:
        metadata = handle.metadata()
    assert (metadata["subsets"], metadata["subsets_of_run"], metadata["partial"]) == ("2", "2", "false")
    assert json.loads(metadata["config"]) == run.config().to_dict()
    # 10 classes x 1 image of 28 px, 1 px padding, scaled x4, with class names and a title
    width, height = Image.open(out / "S1.png").size
    assert width > 4 * 30 and height > 4 * 291


def half_done(finished, tmp_path) -> tuple[Path, RunFolder]:
    """A copy of the finished run as it stood after S1, stopped: S2, its evaluation and its state taken back."""
    home = copy_home(finished[0], tmp_path / "copy")
    run = only_run(home)
    (run.path / "subsets" / "S2.safetensors").unlink()
    (run.path / "eval.json").unlink()
    run.update_status(state="stopped", phase="stopped")
    return home, run


def test_exporting_a_stopped_run_refuses_unless_partial_then_says_so(finished, tmp_path, capsys):
    home, run = half_done(finished, tmp_path)
    assert cli.main(["--home", str(home), "export", run.id]) == 2
    assert capsys.readouterr().err.strip() == (
        f"error: run {run.id} is stopped and holds S1 of its 2 subsets: its set is partial. Finish it first "
        f"(python -m seqmatch_engine distill --resume {run.path}), or pass --partial to export S1 alone, marked as "
        f"partial")
    assert not (run.path / "export").exists()
    assert cli.main(["--home", str(home), "export", run.id, "--partial"]) == 0
    folder = run.path / "export"
    assert capsys.readouterr().out.strip() == (
        f"exported a PARTIAL set to {folder}: S1 of the run's 2 subsets (S2 onwards not learned yet); its metadata "
        f"says so (partial: true)")
    assert sorted(p.name for p in folder.iterdir()) == ["S1.png", "distilled_set.safetensors"]
    with safe_open(str(folder / "distilled_set.safetensors"), "pt") as handle:
        metadata = handle.metadata()
    assert (metadata["subsets"], metadata["subsets_of_run"], metadata["partial"]) == ("1", "2", "true")
    assert metadata["note"] == "partial set: S1 of the run's 2 subsets"


def test_exporting_a_run_while_another_process_trains_it_names_that_process(finished, tmp_path, capsys):
    home, run = half_done(finished, tmp_path)
    run.update_status(state="running", phase="distilling S2")
    code = ("import sys, time\nfrom seqmatch_engine.storage.ownership import OwnerLock\n"
            "with OwnerLock(sys.argv[1], 'x', 'y').hold():\n    print('held', flush=True)\n    time.sleep(600)\n")
    owner = subprocess.Popen([sys.executable, "-c", code, str(run.path / paths.LOCK_FILE)], cwd=paths.REPO_DIR,
                             stdout=subprocess.PIPE, text=True)
    try:
        assert owner.stdout.readline().strip() == "held"
        assert cli.main(["--home", str(home), "export", run.id]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"error: run {run.id} is training (in process {owner.pid} on ") and "--partial" in err
    finally:
        owner.kill()
        owner.wait()


def test_export_defaults_to_the_run_folder(finished, tmp_path, capsys):
    home = copy_home(finished[0], tmp_path / "copy")
    run = only_run(home)
    assert cli.main(["--home", str(home), "export", str(run.path)]) == 0
    assert capsys.readouterr().out.strip() == f"exported to {run.path / 'export'}"
    assert (run.path / "export" / "distilled_set.safetensors").is_file()


def test_evaluate_with_other_settings_writes_its_own_evaluation_and_never_replaces_eval_json(finished, tmp_path,
                                                                                             capsys):
    home = copy_home(finished[0], tmp_path / "copy")
    run = only_run(home)
    own_bytes, own = (run.path / "eval.json").read_bytes(), 100 * run.eval().accuracy()["mean"]
    lrs = ", ".join(f"{s.lr:.4g}" for s in run.subsets())
    rc = cli.main(["--home", str(home), "evaluate", str(run.path), "--nets", "1", "--epochs", "2"])
    assert rc == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"method seqmatch  IPC 2  learned lrs {lrs}"
    assert lines[1].startswith("synthetic    convnet") and lines[1].endswith("(1 nets)")
    assert lines[2].startswith("random_real  convnet") and lines[2].endswith("(1 nets)")
    assert (run.path / "eval.json").read_bytes() == own_bytes, "another measurement must not replace the run's own"
    other = run.evaluations()["epochs2"]  # 1 net is the run's own setting: only the epochs differ
    assert (other.eval_epochs, other.num_nets) == (2, 1)
    assert f"{100 * other.accuracy()['mean']:6.2f} ± 0.00 %" in lines[1]
    assert f"{100 * other.accuracy('random_real')['mean']:6.2f} ± 0.00 %" in lines[2]
    assert lines[3] == (f"evaluation 'epochs2' (settings other than the run's own) written to "
                        f"{run.path / 'evaluations' / 'epochs2.json'}; the run's own evaluation, eval.json "
                        f"({own:.2f} %), is unchanged and is what lists and studies show")
    assert lines[4] == (f"evaluations of run {run.id}: its own (eval.json): {own:.2f} %; "
                        f"epochs2: {100 * other.accuracy()['mean']:.2f} %")
    assert run.config().eval.epochs == 1, "evaluate must not rewrite the stored config"
    assert cli.main(["--home", str(home), "runs"]) == 0  # the list shows the run's own accuracy, the other beside it
    row = capsys.readouterr().out
    assert f"{own:.2f} %" in row and f"other evaluations: epochs2 {100 * other.accuracy()['mean']:.2f} %" in row
    # the run's own settings again: its own evaluation, the same bytes (the same nets, read back)
    assert cli.main(["--home", str(home), "evaluate", str(run.path)]) == 0
    assert (run.path / "eval.json").read_bytes() == own_bytes
    assert "evaluation 'epochs2'" not in capsys.readouterr().out


def test_evaluation_names_say_what_differs_from_the_run():
    own = RunConfig().eval
    assert cli.evaluation_name(own, own) is None
    changed = RunConfig.from_dict({"eval": {"epochs": 2, "num_nets": 3, "architectures": ["convnet", "vgg11"]}}).eval
    assert cli.evaluation_name(own, changed) == "epochs2-nets3-arch-convnet-vgg11"


def test_evaluating_again_reads_the_nets_trained_before_and_says_so(finished, tmp_path, capsys):
    home = copy_home(finished[0], tmp_path / "copy")
    run = only_run(home)
    command = ["--home", str(home), "evaluate", str(run.path), "--nets", "2", "--epochs", "2"]
    assert cli.main(command) == 0
    first = capsys.readouterr().out.splitlines()
    assert not any("were read from" in line for line in first)
    assert cli.main(command) == 0
    again = capsys.readouterr().out.splitlines()
    assert again[:3] == first[:3]  # the same accuracies
    assert again[-1].startswith("(4 evaluation nets were read from") and "delete that folder" in again[-1]


def test_evaluate_keeps_the_run_done(finished, tmp_path, capsys):
    home = copy_home(finished[0], tmp_path / "copy")
    run = only_run(home)
    assert cli.main(["--home", str(home), "evaluate", str(run.path), "--nets", "1", "--epochs", "1"]) == 0
    assert run.status().state == "done"


def test_evaluate_with_an_unknown_architecture_exits_2(finished, tmp_path, capsys):
    home = copy_home(finished[0], tmp_path / "copy")
    run = only_run(home)
    rc = cli.main(["--home", str(home), "evaluate", str(run.path), "--arch", "resnet50"])
    assert rc == 2
    assert "resnet50" in capsys.readouterr().err


def test_static_distill_makes_a_one_subset_run(finished, tmp_path, capsys):
    home = copy_home(finished[0], tmp_path / "static", runs=False)  # reuse the cached stage-1 experts
    rc = cli.main(["--home", str(home), "distill", "--static", *tiny_args("name=tiny", "distill.select_every=2")])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    run = only_run(home)
    assert re.fullmatch(r"\d{8}-\d{6}-mtt-tiny-mtt", run.id), run.id
    config = run.config()
    assert config.method == "mtt"
    assert len(config.distill.subsets) == 1
    subset = config.distill.subsets[0]
    assert (subset.ipc, subset.interval, subset.iterations) == (2, (0, 3), 2)  # per-image: as many as each subset
    assert config.budget == "per-image" and "budget convention: per-image (authors' convention" in captured.err
    assert captured.out.splitlines()[0].startswith("method mtt  IPC 2  budget per-image  learned lrs ")
    assert len(run.subsets()) == 1 and tuple(run.subsets()[0].images.shape) == (20, 1, 28, 28)
    assert "[experts 2]" not in captured.err
    assert "  S1 it 2: val acc " in captured.err  # select_every=2 reports validation accuracy
    selections = [r.iteration for r in run.metrics() if isinstance(r, SelectionRecord)]
    assert selections == [0, 2]
    rc = cli.main(["--home", str(home), "distill", "--static", "--budget", "total", *tiny_args("name=total")])
    assert rc == 0
    total = [r for r in list_runs(home / "runs") if r.config().name == "total-mtt"][0].config()
    assert total.budget == "total" and total.distill.subsets[0].iterations == 4


class _StoppedControl(seqmatch.RunControl):
    """A RunControl whose stop button was pressed before the run started."""

    def __init__(self) -> None:
        super().__init__()
        self.stop()


def test_stopped_distill_exits_1_and_resumes(finished, tmp_path, monkeypatch, capsys):
    home = copy_home(finished[0], tmp_path / "resume", runs=False)
    run_control = seqmatch.RunControl
    monkeypatch.setattr(seqmatch, "RunControl", _StoppedControl)
    rc = cli.main(["--home", str(home), "distill", "--static", *tiny_args()])
    captured = capsys.readouterr()
    run = only_run(home)
    assert rc == 1, captured.err
    assert captured.out.strip() == f"stopped; resume with: python -m seqmatch_engine distill --resume {run.path}"
    assert run.status().state == "stopped"
    assert run.subsets() == []

    monkeypatch.setattr(seqmatch, "RunControl", run_control)
    run.update_status(error="RuntimeError: from the last attempt")  # as a failed run leaves it
    rc = cli.main(["--home", str(home), "distill", "--resume", str(run.path)])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert captured.out.splitlines()[0].startswith("method mtt  IPC 2")
    assert run.status().state == "done" and run.status().error is None, "a resumed run's old error is past"
    assert len(list((home / "runs").iterdir())) == 1, "resuming must not create another run"


def test_a_resumed_runs_bar_counts_its_rate_from_where_it_resumed(capsys):
    """Resuming at iteration 220 of 300 must not show 220 iterations done in no time (a rate in the
    millions and an ETA of 00:00, seen on a resumed study run): the bar starts at the first count."""
    from seqmatch_engine.interfaces.cli_progress import ProgressBars
    from seqmatch_engine.orchestration.driver import Event, EventKind

    bars = ProgressBars()
    for iteration in (220, 221):
        bars(Event(EventKind.ITERATION, stage=0, iteration=iteration,
                   data={"total": 300, "loss": 0.5, "lr": 0.03, "start_epoch": 1}))
    bar = bars.bar
    assert bar is not None and bar.n == 221
    assert bar.format_dict["initial"] == 220, "tqdm's rate and ETA count from `initial`"
    bars.close()
