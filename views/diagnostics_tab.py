"""Diagnostics tab: G1-G4 for any finished run, computed on demand in the background and cached."""
from __future__ import annotations

import html
from dataclasses import dataclass

import gradio as gr

from seqmatch_engine.interfaces.manager import JobManager
from seqmatch_engine.interfaces.queries import DiagnosticsOptions, RunError, RunState, RunView, StorageError
from views.figures import g1_heatmap_slider
from views.overlays import comparison_overlays, run_figures
from views.render import status_html


def finished_runs(manager: JobManager) -> list[str]:
    return [row.id for row in (run.overview() for run in manager.library.runs()) if row.state == RunState.DONE]


def g2_partner(run: RunView, runs: dict[str, RunView]) -> RunView | None:
    """For a static MTT run: the selected SeqMatch run of the same seed (retrained experts) whose families G2
    also scores it on; None otherwise."""
    config = run.config()
    if config.method != "mtt":
        return None
    for other in runs.values():
        theirs = other.config()
        if theirs.method == "seqmatch" and theirs.seed == config.seed and theirs.distill.expert_source == "retrained":
            return other
    return None


SOFT_LABEL_NOTE = (
    "**Runs with soft labels (DATM).** Every diagnostic applies, with the set's own labels: G1 measures the same "
    "pixel gradients; G2 trains the student on the soft labels (soft cross-entropy), as the set was learned; G3 "
    "colours each synthetic image by its label's top class; G4 trains the evaluation nets on the soft labels, as "
    "the set's evaluation does.")


@dataclass
class DiagnosticsTab:
    manager: JobManager

    def build(self) -> None:
        with gr.Row():
            self.runs = gr.Dropdown(finished_runs(self.manager), multiselect=True, label="Finished runs (first = main)",
                                    allow_custom_value=True,
                                    scale=4, elem_id="sm-diag-runs")
            self.reducer = gr.Radio(["pca", "umap"], value="pca", label="G3 map", scale=1,
                                    info="pca: instant preview; umap: slower, truer neighbourhoods")
            self.reload = gr.Button("↻ runs", size="sm", scale=0)
        with gr.Row():
            self.show = gr.Button("Show", variant="secondary")
            self.compute = gr.Button("Compute missing G2-G4", variant="primary", elem_id="sm-diag-compute")
        gr.Markdown(SOFT_LABEL_NOTE, elem_classes="sm-note")
        self.status = gr.HTML()
        self.summary = gr.Markdown()
        with gr.Row():
            self.g1_heatmap = gr.Plot(label="G1 gradient similarity (slider: time)")
            self.g1_lines = gr.Plot(label="G1 over iterations")
        with gr.Row():
            self.g1_coupling = gr.Plot(label="G1 coupling, runs overlaid")
            self.g2 = gr.Plot(label="G2 matching error by expert epoch")
        with gr.Row():
            self.g3 = gr.Plot(label="G3 features across expert epochs")
            self.g4 = gr.Plot(label="G4 easy vs hard test images")
        self.job = gr.State(None)

    def wire(self, timer: gr.Timer) -> None:
        figures = [self.summary, self.g1_heatmap, self.g1_lines, self.g1_coupling, self.g2, self.g3, self.g4]
        self.reload.click(lambda: gr.update(choices=finished_runs(self.manager)), None, self.runs, api_name=False)
        self.show.click(self.on_show, self.runs, figures, api_name="diagnostics_show")
        self.compute.click(self.on_compute, [self.runs, self.reducer], [self.job, self.status],
                           api_name="diagnostics_compute")
        timer.tick(self.on_poll, [self.job, self.runs], [self.job, self.status, *figures], concurrency_limit=None,
                   show_progress="hidden", api_name="diagnostics_poll")

    def _runs(self, run_ids: list[str] | None) -> list[tuple[str, RunView]]:
        runs = []
        for run_id in run_ids or []:
            run = self.manager.library.run(run_id)
            runs.append((f"{run.config().method.upper()} {run_id[:15]}", run))
        return runs

    def figures(self, text: str, g1_heatmap=None, g1_lines=None, g1_coupling=None, g2=None, g3=None, g4=None) -> dict:
        """The summary and every figure of the tab, by name (an absent figure is cleared)."""
        return {self.summary: text, self.g1_heatmap: g1_heatmap, self.g1_lines: g1_lines,
                self.g1_coupling: g1_coupling, self.g2: g2, self.g3: g3, self.g4: g4}

    def on_show(self, run_ids: list[str] | None) -> dict:
        try:
            runs = self._runs(run_ids)
        except RunError as error:
            return self.figures(f"**{error}**")
        if not runs:
            return self.figures("Pick one or more finished runs.")
        try:
            text, coupling, g2, g4 = comparison_overlays(runs)
            main = runs[0][1]
            g1_lines, g3 = run_figures(main)
            records = main.g1()
        except StorageError as error:  # a damaged G1 record file (G2 and G4 are reported in the text)
            return self.figures(f"**{error}**")
        return self.figures(text, g1_heatmap=g1_heatmap_slider(records) if records else None, g1_lines=g1_lines,
                            g1_coupling=coupling, g2=g2, g3=g3, g4=g4)

    def on_compute(self, run_ids: list[str] | None, reducer: str):
        if not run_ids:
            return None, "<div class='sm-status'>Pick a finished run first.</div>"
        jobs = []
        try:
            runs = {run_id: self.manager.library.run(run_id) for run_id in run_ids}
            for run_id, run in runs.items():
                partner = g2_partner(run, runs)
                lacking = run.missing_diagnostics(reducer, partner=partner is not None)
                if lacking:
                    jobs.append(self.manager.submit_diagnostics(run_id, DiagnosticsOptions(reducer=reducer),
                                                                tuple(lacking), partner.id if partner else None))
        except RunError as error:
            return None, status_html(None, error=str(error))
        if not jobs:
            return None, "<div class='sm-status'>Everything is computed already: press <b>Show</b>.</div>"
        return jobs, status_html(self.manager.live(jobs[0]), self.manager.queue_position(jobs[0]))

    def on_poll(self, jobs: list[str] | None, run_ids: list[str] | None) -> dict:
        """While jobs run: their status (the figures stay); once done: what they computed."""
        if not jobs:
            return {self.job: jobs}
        lives = [self.manager.live(j) for j in jobs]
        pending = [live for live in lives if live and live.state.active]
        if pending:
            live = pending[0]
            return {self.job: jobs, self.status: status_html(live, self.manager.queue_position(live.run_id))}
        errors = [f"<div class='sm-error'>{html.escape(live.error)}</div>" for live in lives if live and live.error]
        text = "<div class='sm-status'>Diagnostics computed.</div>" if not errors else \
            f"<div class='sm-status'>{''.join(errors)}</div>"
        return {self.job: None, self.status: text, **self.on_show(run_ids)}
