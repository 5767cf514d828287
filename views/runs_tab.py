"""Runs tab: every run on disk, a timeline replay, resume, export, delete, import."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import gradio as gr

from seqmatch_engine.core.config import DATASET_NAMES
from seqmatch_engine.interfaces.manager import JobManager
from seqmatch_engine.interfaces.queries import ImportFailed, RunError, RunState, RunView, StorageError, is_soft
from views.render import accuracy_markdown, subset_panels

COLUMNS = ["run", "method", "IPC", "state", "phase", "accuracy", "random real"]


def _percent(value: dict | None) -> str:
    return f"{100 * value['mean']:.1f} ± {100 * value['std']:.1f}" if value else ""


def run_rows(manager: JobManager) -> list[list]:
    """One table row per run folder, newest first."""
    rows = []
    for run in manager.library.runs():
        row = run.overview()
        owner = None if manager.owns(run.id) else run.owner()
        if manager.owns(run.id):
            state = manager.live(run.id).state
        elif owner:
            state = RunState.RUNNING  # another process (the CLI, another app) trains it
        else:
            state = RunState.on_disk(row.state)  # nothing runs it: interrupted, resumable
        phase = "" if row.phase.lower() == str(state) else row.phase  # "done · done" says nothing twice
        phase += f" (in process {owner.pid} on {owner.host})" if owner else ""
        rows.append([row.id, row.method or "?", row.ipc or "", state, row.problem or phase,
                     _percent(row.accuracy) + (" ⚠ diverged" if row.diverged else ""), _percent(row.baseline)])
    return rows


def buffers_markdown(manager: JobManager) -> str:
    """The imported expert buffers, where they are and what they hold."""
    buffers = manager.library.expert_buffers()
    if not buffers:
        return "*No expert buffer imported yet.*"
    rows = ["Imported expert buffers (trajectories kept in the experts cache; held-out diagnostics and your own "
            "scripts can read them from these folders):", "", "| file | experts | epochs | parameters | folder |",
            "|---|---|---|---|---|"]
    rows += [f"| {b['name']} | {b['experts']} | {b['epochs']} | {b['params']:,} | `{b['folder']}` |" for b in buffers]
    return "\n".join(rows)


def other_evaluations_markdown(run: RunView) -> str:
    """Evaluations with other settings than the run's own (evaluate --epochs ...), listed after the run's own."""
    others = run.evaluations()
    if not others:
        return ""
    rows = ["", "", "Other evaluations (settings differ from the run's own; the table above is the run's result):", "",
            "| evaluation | epochs | nets | accuracy (ConvNet) |", "|---|---|---|---|"]
    for name, result in others.items():
        accuracy = result.accuracy() or next(iter(result.sets.get("synthetic", {}).values()), None)
        rows.append(f"| {name} | {result.eval_epochs} | {result.num_nets} | {_percent(accuracy)} |")
    return "\n".join(rows)


@dataclass
class RunsTab:
    manager: JobManager

    def build(self) -> None:
        with gr.Row():
            self.refresh = gr.Button("Refresh", size="sm", elem_id="sm-runs-refresh")
        self.table = gr.Dataframe(headers=COLUMNS, value=run_rows(self.manager), interactive=False, wrap=True,
                                  elem_id="sm-runs-table")
        with gr.Row():
            self.selected = gr.Dropdown([r[0] for r in run_rows(self.manager)], value=None, label="Run", scale=3,
                                        allow_custom_value=True,
                                        elem_id="sm-runs-select")
            self.resume = gr.Button("Resume / watch", scale=1)
            self.export = gr.Button("Export set", scale=1)
            self.delete = gr.Button("Delete", variant="stop", scale=1)
        self.message = gr.Markdown(elem_id="sm-runs-message")
        with gr.Row(equal_height=False):
            with gr.Column(scale=2):
                self.timeline = gr.Slider(0, 1, value=0, step=1, label="Timeline (snapshot)", elem_id="sm-timeline")
                self.snapshot = gr.Image(label="Snapshot", show_label=False, type="numpy", interactive=False,
                                         height=560, format="png", elem_classes="sm-grid")
            with gr.Column(scale=1):
                self.details = gr.Markdown()
                self.download = gr.File(label="Download", interactive=False)
        with gr.Accordion("Import a set exported here, or a set or expert buffer of the public MTT / SeqMatch / "
                          "DATM code", open=False):
            self.upload = gr.File(file_count="multiple", label="distilled_set.safetensors (exported here), or "
                                                               "images_best.pt + labels_best.pt (+ best_lr.pt or "
                                                               "lr_best.pt), or replay_buffer_*.pt")
            with gr.Row():
                self.import_dataset = gr.Dropdown(list(DATASET_NAMES), value="cifar10",
                                                  label="Dataset of a public set (an exported one names its own)")
                self.import_zca = gr.Checkbox(True, label="Public set was distilled with ZCA")
                self.import_button = gr.Button("Import")
            self.buffers = gr.Markdown(buffers_markdown(self.manager), elem_id="sm-buffers")

    def wire(self, run_state: gr.BrowserState) -> None:
        self.refresh.click(self.on_refresh, None, [self.table, self.selected], api_name="refresh_runs")
        self.selected.change(self.on_select, self.selected, [self.details, self.timeline, self.snapshot],
                             api_name="select_run")
        self.timeline.release(self.on_timeline, [self.selected, self.timeline], self.snapshot, api_name="timeline")
        self.resume.click(self.on_resume, [self.selected, run_state], [run_state, self.message], api_name="resume_run")
        self.export.click(self.on_export, self.selected, [self.download, self.message], api_name="export_run")
        self.delete.click(self.on_delete, self.selected, [self.message, self.table, self.selected], api_name="delete_run")
        self.import_button.click(self.on_import, [self.upload, self.import_dataset, self.import_zca],
                                 [self.message, self.table, self.selected, self.buffers], api_name="import_files")

    # -- handlers ------------------------------------------------------------------------------------
    def _run(self, run_id: str) -> RunView:
        return self.manager.library.run(run_id)

    def on_refresh(self):
        rows = run_rows(self.manager)
        return rows, gr.update(choices=[r[0] for r in rows])

    def on_select(self, run_id: str):
        if not run_id:
            return "", gr.update(maximum=1, value=0), None
        try:
            run = self._run(run_id)
            config, status = run.config(), run.status()
        except RunError as error:
            return f"**{error}**", gr.update(maximum=1, value=0), None
        except (StorageError, ValueError) as error:  # a damaged or foreign file: which, and what to do
            return f"**Run `{run_id}` cannot be read:** {error}", gr.update(maximum=1, value=0), None
        snapshots = run.snapshots()
        lines = [f"**{run.id}**", f"- method **{config.method}**, IPC {config.ipc} "
                 f"({' + '.join(str(s.ipc) for s in config.distill.subsets)}), dataset `{config.data.dataset}`",
                 f"- state **{status.state}**, phase {status.phase}",
                 f"- learned lrs: {', '.join(f'{s.lr:.4g}' for s in run.subsets()) or '–'}",
                 f"- {len(snapshots)} timeline snapshots"]
        lines += [f"- ⚠ {m.text}" for m in status.messages if m.level == "warning"]
        if status.error:
            lines.append(f"- ❌ {status.error}")
        text = "\n".join(lines) + "\n\n" + accuracy_markdown(run.eval()) + other_evaluations_markdown(run)
        last = max(len(snapshots) - 1, 1)
        return text, gr.update(maximum=last, value=last), self.final_image(run)

    def final_image(self, run: RunView):
        info = run.display_info()
        subsets = run.subsets()
        if info is None or not subsets:
            return None
        return subset_panels({k: s.images for k, s in enumerate(subsets)}, *info)

    def on_timeline(self, run_id: str, index: float):
        try:
            run = self._run(run_id)
        except RunError:
            return None
        snapshots, info = run.snapshots(), run.display_info()
        if not snapshots or info is None:
            return None
        stage, iteration = snapshots[min(int(index), len(snapshots) - 1)]
        earlier = run.subsets()[:stage]
        images = {k: s.images for k, s in enumerate(earlier)}
        images[stage] = run.snapshot_images(stage, iteration)
        soft = {k: s.labels for k, s in enumerate(earlier) if is_soft(s.labels)}
        if (labels := run.snapshot_labels(stage, iteration)) is not None:
            soft[stage] = labels
        iterations = run.config().distill.subsets[stage].iterations
        return subset_panels(images, *info, active_stage=stage, soft_labels=soft,
                             caption=f"S{stage + 1} after iteration {iteration} of {iterations}")

    def on_resume(self, run_id: str, current: str | None):
        try:
            run = self._run(run_id)
        except RunError as error:
            return current, f"**{error}**"
        overview = run.overview()
        if overview.state == RunState.UNREADABLE:
            return current, f"**Cannot resume `{run_id}`:** {overview.problem}"
        if overview.state == RunState.DONE:
            return current, f"`{run_id}` is finished; its images are shown below."
        owner = None if self.manager.owns(run_id) else run.owner()
        self.manager.resume(run_id)
        if owner:
            return run_id, (f"`{run_id}` is in use by {owner.describe()}: it resumes here when that one ends "
                            f"(follow it on the **Distil** tab).")
        return run_id, f"Resuming `{run_id}`: follow it on the **Distil** tab."

    def on_export(self, run_id: str):
        try:
            archive, exported = self._run(run_id).export_archive()
        except (RunError, StorageError) as error:
            return None, f"**Cannot export:** {error}"
        if exported.partial:
            return str(archive), (f"Exported a **partial** set of `{run_id}`: S1–S{exported.held} of its {exported.total} "
                             f"subsets (the rest is not learned yet; the file's metadata says partial: true).")
        return str(archive), f"Exported `{run_id}`: safetensors + one PNG grid per subset."

    def on_delete(self, run_id: str):
        try:
            self.manager.delete(run_id)
        except RunError as error:
            return f"**Cannot delete:** {error}.", run_rows(self.manager), gr.update()
        rows = run_rows(self.manager)
        return f"Deleted `{run_id}`.", rows, gr.update(choices=[r[0] for r in rows], value=None)

    def on_import(self, files: list[str] | None, dataset: str, zca: bool):
        if not files:
            return "**Choose files to import first.**", gr.update(), gr.update(), gr.update()
        paths = [Path(f) for f in files]
        try:
            buffers = [p for p in paths if p.name.startswith("replay_buffer")]
            if buffers:
                notes = []
                for path in buffers:
                    folder, n, epochs, params = self.manager.library.import_experts(path)
                    notes.append(f"`{path.name}`: {n} experts × {epochs - 1} epochs × {params} parameters → `{folder}`")
                message = "Imported expert buffers:\n" + "\n".join(f"- {n}" for n in notes)
            else:
                run = self.manager.library.import_set(paths, dataset, zca)
                message = f"Imported the set as run `{run.id}`."
        except (ImportFailed, StorageError, ValueError) as error:
            return f"**Import failed:** {error}", gr.update(), gr.update(), gr.update()
        rows = run_rows(self.manager)
        return message, rows, gr.update(choices=[r[0] for r in rows]), buffers_markdown(self.manager)
