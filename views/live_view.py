"""A live view of one run: status card, labelled subset grids, curves, accuracies.

Used once on the Distil tab and twice (side by side) on the Compare tab. `poll` is a plain
function the page's timer calls; it re-sends the image and the curves only when they changed.
"""
from __future__ import annotations

from dataclasses import dataclass

import gradio as gr

from seqmatch_engine.interfaces.live import LiveState
from seqmatch_engine.interfaces.manager import JobManager
from seqmatch_engine.interfaces.queries import RunError, RunState, RunView, is_soft
from views.render import accuracy_markdown, curves_figure, placeholder_figure, status_html, subset_panels


@dataclass
class LiveView:
    manager: JobManager
    title: str = ""
    start: str = "Start"  # the label of the button that starts a run here

    def build(self) -> None:
        if self.title:
            gr.Markdown(f"### {self.title}")
        self.status = gr.HTML(status_html(None, start=self.start), elem_classes="sm-status-box")
        gr.Markdown("**Synthetic images** · a row per class, a panel per subset; they appear below as soon as a run "
                    "starts", elem_classes="sm-caption")
        self.images = gr.Image(label="Synthetic images", show_label=False, type="numpy", interactive=False,
                               format="png", buttons=["download", "fullscreen"], elem_classes="sm-grid", height=560)
        self.curves = gr.Plot(placeholder_figure("Matching loss, learned lr α and start epoch t, per iteration, "
                                                 "once the run distils"),
                              label="Optimisation", show_label=False, elem_classes="sm-curves")
        self.accuracy = gr.Markdown(elem_classes="sm-accuracy")
        self.version = gr.State("")

    def poll(self, run_id: str | None, version: str) -> dict:
        """The status card always; the image, curves and accuracy only when the run's picture changed since
        `version` (then the new version too): named updates, what is left out stays."""
        live = self.manager.live(run_id) if run_id else None
        if live is None:
            return {self.status: status_html(None, start=self.start)}
        try:
            run = self.manager.library.run(run_id)
        except RunError as error:
            return {self.status: status_html(None, error=str(error))}
        key = f"{run_id}:{live.image_version}:{live.iteration}:{live.state}"
        status = status_html(live, self.manager.queue_position(run_id))
        if key == version:
            return {self.status: status}
        changed = {self.status: status, self.images: self.render_images(run, live), self.version: key,
                   self.accuracy: accuracy_markdown(run.eval()) if live.state == RunState.DONE else ""}
        if live.losses:
            changed[self.curves] = curves_figure(live)
        return changed

    @staticmethod
    def render_images(run: RunView, live: LiveState):
        info = run.display_info()
        if info is None or not live.images:
            return None  # nothing of this run yet: an empty panel, never another run's picture
        transform, names = info
        finished = run.subsets()
        images = {k: subset.images for k, subset in enumerate(finished) if k not in live.images}
        images.update(live.images)
        soft = {k: subset.labels for k, subset in enumerate(finished) if is_soft(subset.labels)}
        soft.update(live.soft_labels)
        running = live.state in (RunState.RUNNING, RunState.PAUSED)
        unfinished = {k for k in images if k >= len(finished) and k not in live.waiting}
        return subset_panels(images, transform, names, live.stage if running else None, live.waiting,
                             set() if running else unfinished, soft_labels=soft)


def poll_outputs(view: LiveView) -> list:
    return [view.status, view.images, view.curves, view.accuracy, view.version]
