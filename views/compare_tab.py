"""Compare tab: static MTT and SeqMatch at the same total IPC, side by side, live or from past runs."""
from __future__ import annotations

from dataclasses import dataclass

import gradio as gr
import plotly.graph_objects as go

from seqmatch_engine.config import BUDGET_NOTES, ConfigError, preset_names
from seqmatch_engine.manager import JobManager
from seqmatch_engine.records import EvalResult, RunState
from seqmatch_engine.runs import RunError, RunFolder, list_runs

from .forms import FormValues, compare_pair, form_defaults
from .live_view import LiveView, poll_outputs
from .overlays import comparison_overlays
from .palette import method_colour
from .render import placeholder_figure

DEFAULT_PRESET = "cpu-demo"
START_LABEL = "Start comparison"
CHARTS_LABEL = "Update comparison charts"
BUDGET_EXPLAINED = (
    "**Budget.** *Per image* (the authors' convention, default): each SeqMatch subset runs as many iterations as "
    "static MTT's whole run, so every image gets the same number of updates and the compute is about equal. "
    "*Total*: static MTT runs the sum of the subsets' iterations, twice the updates per image at K = 2. "
    "**Headroom.** SeqMatch can only help where the experts end well above what static MTT reaches; on the small "
    "CPU presets they barely do. On this CPU's headroom study static MTT stayed ahead of SeqMatch at IPC 10 and 20 "
    "(Learn tab: the table, paired differences over 3 seeds).")


def accuracy_figure(results: list[tuple[str, EvalResult | None]]) -> go.Figure:
    """Bars of test accuracy (mean ± std) for each labelled run and the random-real baseline."""
    names, means, stds, colours = [], [], [], []
    baseline = None
    for label, result in results:
        acc = result.accuracy() if result else None
        if acc is None:
            continue
        names.append(label)
        means.append(100 * acc["mean"])
        stds.append(100 * acc["std"])
        colours.append(method_colour(result.method))
        baseline = baseline or result.accuracy("random_real")
    if baseline:
        names.append("random real")
        means.append(100 * baseline["mean"])
        stds.append(100 * baseline["std"])
        colours.append(method_colour("random_real"))
    figure = go.Figure(go.Bar(x=names, y=means, error_y={"type": "data", "array": stds}, marker_color=colours,
                              text=[f"{m:.1f}" for m in means], textposition="outside"))
    figure.update_layout(title="Test accuracy (ConvNet, mean ± std over nets)", yaxis_title="accuracy (%)",
                         template="plotly_white", height=320, margin={"l": 50, "r": 10, "t": 50, "b": 40},
                         yaxis={"range": [0, max(means + [10]) * 1.15]})
    return figure


def run_choices(manager: JobManager, method: str) -> list[str]:
    return [row.id for row in map(RunFolder.overview, list_runs(manager.runs_root))
            if row.method == method and row.state == RunState.DONE]


@dataclass
class CompareTab:
    manager: JobManager

    def build(self) -> None:
        defaults = form_defaults(DEFAULT_PRESET)
        with gr.Row():
            self.preset = gr.Dropdown(preset_names(), value=DEFAULT_PRESET, label="Preset", scale=2)
            self.ipc = gr.Number(defaults.ipc, label="Total IPC", precision=0, scale=1)
            self.num_subsets = gr.Number(defaults.num_subsets, label="SeqMatch subsets K", precision=0, scale=1)
            self.iterations = gr.Number(defaults.iterations, label="Iterations per subset", precision=0, scale=1)
            self.budget = gr.Dropdown([("per image", "per-image"), ("total", "total")], value="per-image",
                                      label="Budget convention", scale=1, min_width=170, elem_id="sm-compare-budget")
            self.start = gr.Button(START_LABEL, variant="primary", scale=1, elem_id="sm-compare-start")
        gr.Markdown(BUDGET_EXPLAINED, elem_classes="sm-note")
        with gr.Accordion("…or pick two finished runs", open=False):
            with gr.Row():
                self.pick_mtt = gr.Dropdown(run_choices(self.manager, "mtt"), value=None, label="Static MTT run",
                                            allow_custom_value=True)
                self.pick_seq = gr.Dropdown(run_choices(self.manager, "seqmatch"), value=None, label="SeqMatch run",
                                            allow_custom_value=True, elem_id="sm-compare-pick-seq")
                self.show = gr.Button("Show")
        self.message = gr.Markdown(elem_id="sm-compare-message")
        with gr.Row(equal_height=False):
            with gr.Column():
                self.mtt_view = LiveView(self.manager, "Static MTT", start=START_LABEL)
                self.mtt_view.build()
            with gr.Column():
                self.seq_view = LiveView(self.manager, "SeqMatch", start=START_LABEL)
                self.seq_view.build()
        self.refresh = gr.Button(CHARTS_LABEL, size="sm")
        self.accuracy = gr.Plot(placeholder_figure(f"Test accuracy of both runs and of random real images, once both "
                                                   f"are evaluated: press {CHARTS_LABEL}"), label="Accuracy")
        self.overlays = gr.Markdown()
        with gr.Row():
            self.g1 = gr.Plot(placeholder_figure("G1 coupling of both runs (recorded while distilling when "
                                                 "distill.diagnose_every > 0)"), label="G1 coupling")
            self.g2 = gr.Plot(placeholder_figure("G2 matching error by expert epoch (Diagnostics tab computes it)"),
                              label="G2 matching error")
        self.g4 = gr.Plot(placeholder_figure("G4 accuracy on easy and hard test images (Diagnostics tab computes it)"),
                          label="G4 easy vs hard")

    def wire(self, timer: gr.Timer) -> None:
        self.mtt_state = gr.BrowserState(None, storage_key="seqmatch-compare-mtt")
        self.seq_state = gr.BrowserState(None, storage_key="seqmatch-compare-seq")
        self.preset.change(self.on_preset, self.preset, [self.ipc, self.num_subsets, self.iterations], queue=False,
                           api_name="compare_preset")
        self.start.click(self.on_start, [self.preset, self.ipc, self.num_subsets, self.iterations, self.budget],
                         [self.mtt_state, self.seq_state, self.message], api_name="compare_start")
        self.show.click(self.on_show, [self.pick_mtt, self.pick_seq], [self.mtt_state, self.seq_state, self.message],
                        api_name="compare_show")
        for view, state in ((self.mtt_view, self.mtt_state), (self.seq_view, self.seq_state)):
            timer.tick(view.poll, [state, view.version], poll_outputs(view), concurrency_limit=None,
                       show_progress="hidden", api_name=False)
        outputs = [self.accuracy, self.overlays, self.g1, self.g2, self.g4]
        self.refresh.click(self.on_refresh, [self.mtt_state, self.seq_state], outputs, api_name="compare_charts")

    @staticmethod
    def on_preset(preset: str) -> tuple[int, int, int]:
        """The pair's total IPC, SeqMatch's K and the iterations per subset, as the preset sets them."""
        values = form_defaults(preset)
        return values.ipc, values.num_subsets, values.iterations

    def on_start(self, preset: str, ipc: float, num_subsets: float, iterations: float, budget: str = "per-image"):
        try:
            values = form_defaults(preset)
            values = FormValues(**{**values.__dict__, "ipc": ipc, "num_subsets": num_subsets, "iterations": iterations})
            mtt, seqmatch = compare_pair(values, budget)
        except ConfigError as error:
            return None, None, f"**Cannot start:** {error}"
        mtt_id, seq_id = self.manager.submit(mtt), self.manager.submit(seqmatch)
        return mtt_id, seq_id, (
            f"Queued static MTT `{mtt_id}` ({mtt.distill.subsets[0].iterations} iterations) then SeqMatch `{seq_id}` "
            f"({' + '.join(str(s.iterations) for s in seqmatch.distill.subsets)} iterations): budget convention "
            f"**{budget}**, {BUDGET_NOTES[budget]}. One seed: a demonstration, not evidence (the Studies tab runs "
            f"several). They share the stage-1 experts and the random-real baseline.")

    def on_show(self, mtt_id: str | None, seq_id: str | None):
        if not mtt_id or not seq_id:
            return gr.skip(), gr.skip(), "**Pick one run of each method.**"
        return mtt_id, seq_id, f"Showing `{mtt_id}` and `{seq_id}`."

    def on_refresh(self, mtt_id: str | None, seq_id: str | None):
        runs = []
        for label, run_id in (("Static MTT", mtt_id), ("SeqMatch", seq_id)):
            try:
                runs.append((label, self.manager.run(run_id)))
            except RunError:
                continue
        figure = accuracy_figure([(f"{label} IPC {run.config().ipc}", run.eval()) for label, run in runs])
        text, g1, g2, g4 = comparison_overlays(runs)
        budgets = {run.config().budget for _, run in runs if run.config().method == "mtt"}
        note = "; ".join(f"budget convention **{b}**: {BUDGET_NOTES[b]}" for b in budgets if b) or \
            "budget convention: not recorded (these runs were not started as a pair)"
        return (figure, f"{note}. One seed per method: a demonstration, not evidence.\n\n{text}",
                g1 or placeholder_figure("No G1 records in these runs: coupling is recorded while distilling when "
                                         "distill.diagnose_every > 0"),
                g2 or placeholder_figure("No G2 for these runs yet: compute it on the Diagnostics tab"),
                g4 or placeholder_figure("No G4 for these runs yet: compute it on the Diagnostics tab"))
