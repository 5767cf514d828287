"""Distil tab: a preset-driven form, Start / Pause / Resume / Stop, live grids, curves, status."""
from __future__ import annotations

from dataclasses import dataclass

import gradio as gr

from seqmatch_engine.core.config import DEFAULT_PRESET, ConfigError, preset_names
from seqmatch_engine.interfaces.manager import JobManager
from seqmatch_engine.interfaces.queries import RunState
from views.forms import METHODS, OBJECTIVES, FormValues, config_from_form, form_defaults
from views.live_view import LiveView, poll_outputs


@dataclass
class DistilTab:
    manager: JobManager
    live_view: LiveView

    def build(self) -> None:
        defaults = form_defaults(DEFAULT_PRESET)
        with gr.Row(equal_height=False):
            with gr.Column(scale=1, min_width=380, elem_classes="sm-form"):
                self.preset = gr.Dropdown(preset_names(), value=DEFAULT_PRESET, label="Preset", elem_id="sm-preset")
                with gr.Row():
                    self.method = gr.Radio(list(METHODS), value=defaults.method, label="Schedule")
                    self.objective = gr.Radio(list(OBJECTIVES), value=defaults.objective, label="Objective",
                                              info="DATM learns soft labels too", elem_id="sm-objective")
                with gr.Row():
                    self.ipc = gr.Number(defaults.ipc, label="IPC (images per class)", precision=0)
                    self.num_subsets = gr.Number(defaults.num_subsets, label="Subsets K", precision=0)
                with gr.Row():
                    self.iterations = gr.Number(defaults.iterations, label="Iterations per subset", precision=0)
                    self.intervals = gr.Textbox(defaults.intervals, label="Start-epoch intervals",
                                                info="one 'start-end' per subset", elem_id="sm-intervals")
                with gr.Accordion("More settings", open=False):
                    with gr.Row():
                        self.syn_steps = gr.Number(defaults.syn_steps, label="Student steps N", precision=0)
                        self.seed = gr.Number(defaults.seed, label="Seed", precision=0)
                    with gr.Row():
                        self.lr_img = gr.Number(defaults.lr_img, label="Pixel lr")
                        self.lr_lr = gr.Number(defaults.lr_lr, label="lr of the learned lr")
                    with gr.Row():
                        self.num_experts = gr.Number(defaults.num_experts, label="Experts", precision=0)
                        self.expert_epochs = gr.Number(defaults.expert_epochs, label="Expert epochs", precision=0)
                    with gr.Row():
                        self.eval_epochs = gr.Number(defaults.eval_epochs, label="Evaluation epochs", precision=0)
                        self.eval_nets = gr.Number(defaults.eval_nets, label="Evaluation nets", precision=0)
                self.start = gr.Button("Start", variant="primary", elem_id="sm-start", interactive=False)
                with gr.Row():
                    self.pause = gr.Button("Pause", size="sm", min_width=80, elem_id="sm-pause")
                    self.resume = gr.Button("Resume", size="sm", min_width=80, elem_id="sm-resume")
                    self.stop = gr.Button("Stop", variant="stop", size="sm", min_width=80, elem_id="sm-stop")
                self.message = gr.Markdown(elem_classes="sm-message", elem_id="sm-distil-message")
            with gr.Column(scale=2):
                self.live_view.build()

    @property
    def form_inputs(self) -> list[gr.components.Component]:
        return [getattr(self, name) for name in FormValues.fields()]

    def wire(self, run_state: gr.BrowserState, timer: gr.Timer) -> None:
        # queue=False: the form fills at once, not behind a running run's events, so Start never reads a half-filled form
        self.preset.change(self.on_preset, self.preset, self.form_inputs[1:], api_name="preset", queue=False)
        self.start.click(self.on_start, [*self.form_inputs, run_state], [run_state, self.message], api_name="start")
        self.pause.click(self.on_pause, run_state, self.message, api_name="pause")
        self.resume.click(self.on_resume, run_state, self.message, api_name="resume")
        self.stop.click(self.on_stop, run_state, self.message, api_name="stop")
        timer.tick(self.live_view.poll, [run_state, self.live_view.version], poll_outputs(self.live_view),
                   concurrency_limit=None, show_progress="hidden", api_name="poll")

    # -- handlers (plain functions of values) -------------------------------------------------------
    @staticmethod
    def on_preset(preset: str) -> list:
        values = form_defaults(preset)
        return [getattr(values, name) for name in FormValues.fields()[1:]]

    def on_start(self, *args):
        *values, run_id = args
        try:
            config = config_from_form(FormValues(*values))
        except ConfigError as error:
            return run_id, f"**Cannot start:** {error}"
        new_id = self.manager.submit(config)
        position = self.manager.queue_position(new_id)
        note = "" if position == 0 else f" It waits for {position} run(s) ahead of it."
        return new_id, f"Started `{new_id}`.{note}"

    def on_pause(self, run_id: str | None) -> str:
        return self._control(run_id, self.manager.pause, "Paused")

    def on_resume(self, run_id: str | None) -> str:
        return self._control(run_id, self.manager.unpause, "Resumed")

    def on_stop(self, run_id: str | None) -> str:
        if not self.manager.owns(run_id):
            return "No run of this page is active: press **Start** first (or resume one from the Runs tab)."
        was = self.manager.stop(run_id)
        if was == RunState.QUEUED:
            return f"Removed `{run_id}` from the queue before it started; resume it from the Runs tab."
        if was is not None and not was.active:
            return f"`{run_id}` is not running ({was})."
        return f"Stopping `{run_id}` after this iteration; it can be resumed from the Runs tab."

    def _control(self, run_id: str | None, action, text: str) -> str:
        if not self.manager.owns(run_id):
            return "No run of this page is active: press **Start** first (or resume one from the Runs tab)."
        action(run_id)
        return f"{text}: `{run_id}`"
