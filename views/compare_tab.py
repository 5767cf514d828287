"""Compare tab: up to four methods (MTT or DATM, static or sequential) at the same total IPC, side by side, live or
from past runs; accuracy with error bars beside both random-real baselines, and each method's gain over the
baseline trained the same way."""
from __future__ import annotations

from dataclasses import dataclass

import gradio as gr
import plotly.graph_objects as go

from seqmatch_engine.core.config import BUDGET_NOTES, DEFAULT_PRESET, METHODS, ConfigError, preset_names
from seqmatch_engine.interfaces.manager import JobManager
from seqmatch_engine.interfaces.queries import EvalResult, RunError, RunState
from views.forms import FormValues, compare_set, form_defaults
from views.live_view import LiveView, poll_outputs
from views.overlays import comparison_overlays
from views.palette import METHOD_NAMES, method_colour
from views.render import placeholder_figure

DEFAULT_METHODS = ["mtt", "seqmatch"]
START_LABEL = "Start comparison"
CHARTS_LABEL = "Update comparison charts"
BUDGET_EXPLAINED = (
    "**Budget.** *Per image* (the authors' convention, default): each SeqMatch subset runs as many iterations as "
    "static MTT's whole run, so every image gets the same number of updates and the compute is about equal. "
    "*Total*: static MTT runs the sum of the subsets' iterations, twice the updates per image at K = 2. "
    "**Headroom.** SeqMatch can only help where the experts end well above what static MTT reaches; on the small "
    "CPU presets they barely do; what the studies found is in the Learn tab. **Soft labels.** DATM learns soft "
    "labels: random real images with soft labels from the same experts already score far above hard-labelled ones, "
    "so a soft-label method is judged by its gain over *that* baseline (the bars show both).")
EMPTY_NOTE = ("Tick the methods to compare and press **Start comparison**: each one's synthetic images appear below "
              "as they learn, then its accuracy beside the random-real baselines.")


def accuracy_figure(results: list[tuple[str, EvalResult | None]]) -> go.Figure:
    """Bars of test accuracy (mean ± std over nets) of each labelled run, its hard-label accuracy for soft-label
    sets, and the random-real baselines (hard labels; soft labels from the same experts where a run has them)."""
    bars: list[tuple[str, float, float, str]] = []
    baselines: dict[str, dict] = {}
    for label, result in results:
        acc = result.accuracy() if result else None
        if acc is None:
            continue
        bars.append((label, acc["mean"], acc["std"], method_colour(result.method)))
        if result.accuracy("synthetic_hard"):
            hard = result.accuracy("synthetic_hard")
            bars.append((f"{label}, hard labels", hard["mean"], hard["std"], "#cbd5e1"))
        for kind in ("random_real", "random_real_soft"):  # the first run that has a baseline gives it
            if baselines.get(kind) is None:
                baselines[kind] = result.accuracy(kind)
    for kind, baseline in baselines.items():
        if baseline:
            bars.append((METHOD_NAMES[kind], baseline["mean"], baseline["std"], method_colour(kind)))
    means = [100 * b[1] for b in bars]
    figure = go.Figure(go.Bar(x=[b[0] for b in bars], y=means,
                              error_y={"type": "data", "array": [100 * b[2] for b in bars]},
                              marker_color=[b[3] for b in bars], text=[f"{m:.1f}" for m in means],
                              textposition="outside"))
    figure.update_layout(title="Test accuracy (ConvNet, mean ± std over nets)", yaxis_title="accuracy (%)",
                         template="plotly_white", height=340, margin={"l": 50, "r": 10, "t": 50, "b": 60},
                         yaxis={"range": [0, max(means + [10]) * 1.15]})
    return figure


def gains_markdown(results: list[tuple[str, EvalResult | None]]) -> str:
    """Each run's gain over random real images trained the same way (the fair number for soft labels)."""
    lines = []
    for label, result in results:
        if not result or result.accuracy() is None:
            continue
        kind = "random_real_soft" if result.accuracy("synthetic_hard") else "random_real"
        baseline = result.accuracy(kind)
        if baseline:
            gain = 100 * (result.accuracy()["mean"] - baseline["mean"])
            lines.append(f"- **{label}**: {gain:+.2f} points over {METHOD_NAMES[kind]} (the same protocol and nets)")
            hard = result.accuracy("random_real")
            if kind == "random_real_soft" and hard and hard["mean"] > baseline["mean"]:
                lines.append(f"  - but these experts' soft labels score *below* hard labels on random real images "
                             f"({100 * baseline['mean']:.1f} % vs {100 * hard['mean']:.1f} %), so that gain flatters "
                             f"it: over random real with hard labels it is "
                             f"{100 * (result.accuracy()['mean'] - hard['mean']):+.2f} points")
    return ("**Gain over random real, same labels:**\n" + "\n".join(lines)) if lines else ""


def run_choices(manager: JobManager, method: str) -> list[str]:
    return [row.id for row in (run.overview() for run in manager.library.runs())
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
        with gr.Row():
            self.methods = gr.CheckboxGroup([(METHOD_NAMES[m], m) for m in METHODS], value=DEFAULT_METHODS,
                                            label="Methods (objective × schedule)", scale=3,
                                            elem_id="sm-compare-methods")
            self.start = gr.Button(START_LABEL, variant="primary", scale=1, elem_id="sm-compare-start")
        gr.Markdown(BUDGET_EXPLAINED, elem_classes="sm-note")
        with gr.Accordion("…or pick finished runs", open=False):
            with gr.Row():
                self.picks = [gr.Dropdown(run_choices(self.manager, m), value=None, label=f"{METHOD_NAMES[m]} run",
                                          allow_custom_value=True, elem_id=f"sm-compare-pick-{m}") for m in METHODS]
                self.show = gr.Button("Show")
        self.message = gr.Markdown(EMPTY_NOTE, elem_id="sm-compare-message")
        self.views = {m: LiveView(self.manager, METHOD_NAMES[m], start=START_LABEL) for m in METHODS}
        self.columns: dict[str, gr.Column] = {}
        for row in (METHODS[i:i + 2] for i in range(0, len(METHODS), 2)):  # two columns a row
            with gr.Row(equal_height=False):
                for method in row:  # a method's column shows while it is ticked
                    with gr.Column(visible=method in DEFAULT_METHODS) as self.columns[method]:
                        self.views[method].build()
        self.refresh = gr.Button(CHARTS_LABEL, size="sm")
        self.gains = gr.Markdown(elem_id="sm-compare-gains")  # first: the fair number, before the raw accuracies
        self.accuracy = gr.Plot(placeholder_figure(f"Test accuracy of the runs and of random real images, once they "
                                                   f"are evaluated: press {CHARTS_LABEL}"), label="Accuracy")
        self.overlays = gr.Markdown()
        with gr.Row():
            self.g1 = gr.Plot(placeholder_figure("G1 coupling of the runs (recorded while distilling when "
                                                 "distill.diagnose_every > 0)"), label="G1 coupling")
            self.g2 = gr.Plot(placeholder_figure("G2 matching error by expert epoch (Diagnostics tab computes it)"),
                              label="G2 matching error")
        self.g4 = gr.Plot(placeholder_figure("G4 accuracy on easy and hard test images (Diagnostics tab computes it)"),
                          label="G4 easy vs hard")

    def wire(self, timer: gr.Timer) -> None:
        self.states = [gr.BrowserState(None, storage_key=f"seqmatch-compare-{m}") for m in METHODS]
        self.preset.change(self.on_preset, self.preset, [self.ipc, self.num_subsets, self.iterations], queue=False,
                           api_name="compare_preset")
        self.start.click(self.on_start, [self.preset, self.ipc, self.num_subsets, self.iterations, self.budget,
                                         self.methods], [*self.states, self.message], api_name="compare_start")
        self.show.click(self.on_show, self.picks, [*self.states, self.message], api_name="compare_show").then(
            self.on_shown, self.picks, self.methods, queue=False, api_name=False)
        self.methods.change(self.on_methods, self.methods, [self.columns[m] for m in METHODS], queue=False,
                            api_name=False)
        for method, state in zip(METHODS, self.states):
            view = self.views[method]
            timer.tick(view.poll, [state, view.version], poll_outputs(view), concurrency_limit=None,
                       show_progress="hidden", api_name=False)
        outputs = [self.gains, self.accuracy, self.overlays, self.g1, self.g2, self.g4]
        self.refresh.click(self.on_refresh, self.states, outputs, api_name="compare_charts")

    @staticmethod
    def on_preset(preset: str) -> tuple[int, int, int]:
        """The comparison's total IPC, SeqMatch's K and the iterations per subset, as the preset sets them."""
        values = form_defaults(preset)
        return values.ipc, values.num_subsets, values.iterations

    def on_start(self, preset: str, ipc: float, num_subsets: float, iterations: float, budget: str = "per-image",
                 methods: list[str] | None = None):
        """Queue one run per ticked method; returns each method's run id (None for unticked ones) and a message."""
        methods = [m for m in METHODS if m in (DEFAULT_METHODS if methods is None else methods)]
        try:
            values = form_defaults(preset)
            values = FormValues(**{**values.__dict__, "ipc": ipc, "num_subsets": num_subsets, "iterations": iterations})
            configs = compare_set(values, budget, tuple(methods))
        except ConfigError as error:
            return {self.message: f"**Cannot start:** {error}"}
        ids = {method: self.manager.submit(config) for method, config in configs.items()}
        queued = ", then ".join(f"{METHOD_NAMES[m]} `{ids[m]}` "
                                f"({' + '.join(str(s.iterations) for s in configs[m].distill.subsets)} iterations)"
                                for m in methods)
        return {**{state: ids.get(m) for m, state in zip(METHODS, self.states)}, self.message: (
            f"Queued {queued}: budget convention **{budget}**, {BUDGET_NOTES[budget]}. One seed: a demonstration, "
            f"not evidence (the Studies tab runs several). They share the stage-1 experts and the random-real "
            f"baselines.")}

    @staticmethod
    def on_methods(methods: list[str] | None) -> list:
        """Show the columns of the ticked methods only."""
        return [gr.update(visible=m in (methods or [])) for m in METHODS]

    @staticmethod
    def on_shown(*picked: str | None) -> list[str]:
        """Finished runs picked for some methods: tick those methods, so their columns show."""
        return [m for m, run_id in zip(METHODS, picked) if run_id] or gr.skip()

    def on_show(self, *picked: str | None):
        if not any(picked):
            return {self.message: "**Pick at least one finished run.**"}
        shown = ", ".join(f"`{run_id}`" for run_id in picked if run_id)
        return {**dict(zip(self.states, picked)), self.message: f"Showing {shown}."}

    def on_refresh(self, *run_ids: str | None) -> dict:
        runs = []
        for method, run_id in zip(METHODS, run_ids):
            try:
                runs.append((METHOD_NAMES[method], self.manager.library.run(run_id)))
            except RunError:
                continue
        results = [(f"{label} IPC {run.config().ipc}", run.eval()) for label, run in runs]
        text, g1, g2, g4 = comparison_overlays(runs)
        budgets = {run.config().budget for _, run in runs if run.config().schedule == "static"}
        note = "; ".join(f"budget convention **{b}**: {BUDGET_NOTES[b]}" for b in budgets if b) or \
            "budget convention: not recorded (these runs were not started together)"
        return {self.gains: gains_markdown(results), self.accuracy: accuracy_figure(results),
                self.overlays: f"{note}. One seed per method: a demonstration, not evidence.\n\n{text}",
                self.g1: g1 or placeholder_figure("No G1 records in these runs: coupling is recorded while distilling "
                                                  "when distill.diagnose_every > 0"),
                self.g2: g2 or placeholder_figure("No G2 for these runs yet: compute it on the Diagnostics tab"),
                self.g4: g4 or placeholder_figure("No G4 for these runs yet: compute it on the Diagnostics tab")}
