"""Studies tab: list, start and follow studies (grids of paired runs); their table and figures."""
from __future__ import annotations

import html
import time
from dataclasses import dataclass

import gradio as gr

from seqmatch_engine.core.config import BUDGET_NOTES, ConfigError
from seqmatch_engine.core.phases import PhaseKind
from seqmatch_engine.core.study_spec import load_study_spec, study_preset_names
from seqmatch_engine.interfaces.manager import JobKind, JobManager, job_id
from seqmatch_engine.interfaces.queries import RunError, StorageError, StudyView
from views.render import format_seconds, placeholder_figure
from views.study_figures import accuracy_figure, coupling_figure, fair_gain_figure, paired_figure

HEADROOM_NOTE = (
    "**Read this first.** A study pairs the methods by seed: both use that seed's experts, evaluation nets and "
    "random-real baseline, so the paired difference is the fair number. SeqMatch's mechanism needs *headroom*: "
    "the experts it imitates must end clearly above what static MTT reaches at that IPC, or there is no late "
    "knowledge left to capture. One seed is a demonstration, not evidence.")


def study_choices(manager: JobManager) -> list[str]:
    return manager.library.studies()


def study_status_html(study: StudyView, live) -> str:
    """Progress of a study: state, runs done of total, the run in progress and its phase (from the job when this app
    runs it, else from the run's folder), and how long is left at the pace of the runs the study finished itself."""
    status = study.status()
    state = str(live.state if live else status.state)
    owner = study.owner() if live is None else None
    if owner:
        state = f"running in {owner.describe()}"
    elif state in ("running", "queued", "created") and live is None:
        # a process that took no lock (an older version) may be running it, or it was interrupted
        idle = time.time() - study.last_activity()
        state = (f"running in another process ({format_seconds(idle)} since its last write)" if idle < 600
                 else f"interrupted ({format_seconds(idle)} since its last write): Start resumes it")
    running = (live.state == "running") if live else state.startswith("running")
    done, total = status.done, status.total
    parts = [f"<b>{html.escape(state[0].upper() + state[1:])}</b>", f"{done}/{total} runs done"]
    if live and live.state == "running":
        parts.append(html.escape(" · ".join(filter(None, [live.study_run, live.phase]))))
    elif running and status.controls:
        parts.append(html.escape(f"now the evaluation-only controls of {status.controls}"))
    elif running and (current := study.current_run()):
        run_id, run_status = current
        where = run_status.phase + (f" {run_status.iteration}/{run_status.iterations}"
                                    if run_status.phase_kind == PhaseKind.DISTILLING and run_status.iterations else "")
        parts.append(html.escape(f"now {run_id} · {where}" if where else f"now {run_id}"))
    if live and live.waiting_for:
        parts.append(f"waiting: {html.escape(live.waiting_for)}")
    eta = study.eta() if running and total > done else None
    if eta is not None:
        parts.append(f"<span title='the runs left, priced phase by phase at the median pace of the {eta.basis} "
                     f"run(s) this study finished itself'>about {format_seconds(eta.seconds)} left</span>")
    bar = f"<div class='sm-bar'><div style='width:{100 * done / total:.1f}%'></div></div>" if total else ""
    error = f"<div class='sm-error'>{html.escape(status.error)}</div>" if status.error else ""
    return f"<div class='sm-status'>{' · '.join(parts)}{bar}{error}</div>"


@dataclass
class StudiesTab:
    manager: JobManager

    def build(self) -> None:
        gr.Markdown(HEADROOM_NOTE, elem_classes="sm-note")
        with gr.Row():
            self.preset = gr.Dropdown(study_preset_names(), value=(study_preset_names() or [None])[0],
                                      label="Study preset (assets/studies/)", scale=2)
            self.start = gr.Button("Start / resume study", variant="primary", scale=1, elem_id="sm-study-start")
            self.stop = gr.Button("Stop", scale=0)
        with gr.Row():
            self.selected = gr.Dropdown(study_choices(self.manager), value=None, label="Study", scale=3,
                                        allow_custom_value=True,
                                        elem_id="sm-study-select")
            self.refresh = gr.Button("↻ studies", size="sm", scale=0)
        self.status = gr.HTML(elem_classes="sm-status-box")
        self.message = gr.Markdown()
        self.table = gr.Markdown(NO_STUDY_NOTE, elem_id="sm-study-table", elem_classes="sm-study-table")
        accuracy, paired, fair_gain, coupling = empty_figures()
        with gr.Row():
            self.accuracy = gr.Plot(accuracy, label="Accuracy", show_label=False)
            self.paired = gr.Plot(paired, label="Paired differences", show_label=False)
        with gr.Row():
            self.fair_gain = gr.Plot(fair_gain, label="Gain over random real", show_label=False)
            self.coupling = gr.Plot(coupling, label="Coupling", show_label=False)

    def wire(self, timer: gr.Timer) -> None:
        figures = [self.table, self.accuracy, self.paired, self.fair_gain, self.coupling]
        self.start.click(self.on_start, self.preset, [self.selected, self.message], api_name="study_start")
        self.stop.click(self.on_stop, self.selected, self.message, api_name="study_stop")
        self.refresh.click(self.on_refresh, None, self.selected, api_name="study_list")
        self.selected.change(self.on_select, self.selected, [self.status, *figures], api_name="study_show")
        timer.tick(self.on_poll, self.selected, self.status, concurrency_limit=None, show_progress="hidden",
                   api_name="study_poll")

    # -- handlers -------------------------------------------------------------------------------------
    def _study(self, study_id: str | None) -> StudyView:
        if not study_id:
            raise RunError("pick a study first (or start one)")
        return self.manager.library.study(study_id)

    def on_refresh(self):
        return gr.update(choices=study_choices(self.manager))

    def on_start(self, preset: str | None):
        try:
            if preset not in study_preset_names():  # checked first: a request never names a file to read
                raise ConfigError(f"study preset {str(preset)[:80]!r} not found; pick one of the list")
            spec = load_study_spec(preset)
            job = self.manager.submit_study(spec)
        except (ConfigError, RunError, StorageError) as error:
            return gr.update(), f"**Cannot start the study:** {error}"
        position = self.manager.queue_position(job)
        note = "" if position <= 0 else f" It waits for {position} job(s) ahead of it."
        return gr.update(choices=study_choices(self.manager), value=spec.name), (
            f"Study `{spec.name}` queued: {spec.run_count()} runs, budget convention **{spec.budget}** "
            f"({BUDGET_NOTES[spec.budget]}). Finished runs are kept; starting it again resumes it.{note}")

    def on_stop(self, study_id: str | None) -> str:
        job = job_id(JobKind.STUDY, study_id) if study_id else None
        if not job or not self.manager.owns(job):
            return "This app is not running that study."
        self.manager.stop(job)
        return f"Stopping `{study_id}` after the current outer iteration; Start resumes it."

    def shown(self, status: str, table: str, figures: tuple) -> dict:
        """The status, the table and the four figures, by name."""
        return {self.status: status, self.table: table,
                **dict(zip((self.accuracy, self.paired, self.fair_gain, self.coupling), figures, strict=True))}

    def on_select(self, study_id: str | None) -> dict:
        if not study_id:
            return self.shown("", NO_STUDY_NOTE, empty_figures())
        try:
            study = self._study(study_id)
            summary, table = study.summary()
        except (RunError, StorageError, ConfigError) as error:
            return self.shown(study_status_html_error(str(error)), "", empty_figures())
        return self.shown(study_status_html(study, self.manager.live(job_id(JobKind.STUDY, study.id))), table,
                          (accuracy_figure(summary), paired_figure(summary), fair_gain_figure(summary),
                           coupling_figure(summary)))

    def on_poll(self, study_id: str | None):
        if not study_id:
            return gr.skip()
        try:
            study = self._study(study_id)
        except RunError as error:
            return study_status_html_error(str(error))
        return study_status_html(study, self.manager.live(job_id(JobKind.STUDY, study.id)))


NO_STUDY_NOTE = ("Pick a study in *Study* to see its table (each method's accuracy over seeds, the paired difference, "
                 "random real) and its figures, or start one from a preset.")


def empty_figures() -> tuple:
    """What the four figure boxes say before a study is picked."""
    return (placeholder_figure("Accuracy of each method by cell, with error bars over seeds"),
            placeholder_figure("Paired difference, sequential − static schedule, by cell, over seeds"),
            placeholder_figure("Each method's gain over random real images with the same labels (the fair score)"),
            placeholder_figure("Coupling index of each method by cell (G1)"))


def study_status_html_error(text: str) -> str:
    return f"<div class='sm-status'><div class='sm-error'>{html.escape(text)}</div></div>"
