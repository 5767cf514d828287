"""Pure formatting of engine state for the app: labelled image panels, curves, status text."""
from __future__ import annotations

import html
import math

import numpy as np
import plotly.graph_objects as go
import torch

from seqmatch_engine.core.control import format_seconds
from seqmatch_engine.core.phases import PhaseKind
from seqmatch_engine.interfaces.live import LiveState
from seqmatch_engine.interfaces.queries import EvalResult, Panel, PixelTransform, RunState, labelled_panels
from views.palette import METHOD_NAMES, SERIES_COLOURS


def subset_panels(images: dict[int, torch.Tensor], transform: PixelTransform, class_names: tuple[str, ...],
                  active_stage: int | None = None, waiting: frozenset[int] | set[int] = frozenset(),
                  stopped: frozenset[int] | set[int] = frozenset(), caption: str | None = None,
                  soft_labels: dict[int, torch.Tensor] | None = None) -> np.ndarray:
    """One labelled grid per subset side by side (imaging.labelled_panels), pixels mapped back through the run's
    transform. `images` maps a 0-based stage to model inputs (num_classes * ipc_k, C, H, W) grouped by class; a
    panel is titled learning (`active_stage`), frozen (before it), initial (`waiting`: not started), stopped
    (`stopped`: ended before its last iteration) or learned. `soft_labels` (by stage) draws each image's soft label
    as its confidence and top class."""
    num_classes = len(class_names)
    panels = []
    for stage in sorted(images):
        pixels = transform.to_pixels(images[stage])
        ipc = len(pixels) // num_classes
        if stage in waiting:
            state = "initial (real images)"
        elif stage == active_stage:
            state = "learning"
        elif active_stage is not None and stage < active_stage:
            state = "frozen"
        else:
            state = "stopped" if stage in stopped else "learned"
        soft = (soft_labels or {}).get(stage)
        panels.append(Panel(f"S{stage + 1}", f"{ipc}/class · {state}" + (" · soft labels" if soft is not None else ""),
                            SERIES_COLOURS[stage % len(SERIES_COLOURS)], pixels,
                            torch.arange(num_classes).repeat_interleave(ipc), soft))
    return labelled_panels(panels, class_names, caption)


def placeholder_figure(text: str, height: int = 220) -> go.Figure:
    """An empty chart that says what will appear in it (a fresh page shows no blank boxes)."""
    figure = go.Figure()
    figure.add_annotation(text=text, x=0.5, y=0.5, xref="paper", yref="paper", showarrow=False,
                          font={"size": 14, "color": "#64748b"})
    figure.update_layout(template="plotly_white", height=height, xaxis={"visible": False}, yaxis={"visible": False},
                         margin={"l": 10, "r": 10, "t": 10, "b": 10})
    return figure


def whole_ticks(values: list[int], most: int = 6) -> dict:
    """Axis settings for whole numbers from 0: at most about `most` ticks a whole step apart (plotly's own
    choice for a small range steps by 0.5, and whole-number labels then repeat: 0, 0, 1, 1, 2)."""
    return {"tickformat": "d", "tick0": 0, "dtick": max(1, math.ceil(max(values, default=0) / (most - 1)))}


def curves_figure(live: LiveState, height: int = 300) -> go.Figure:
    """Matching loss, learned lr and sampled start epoch against iteration, one colour per subset."""
    from plotly.subplots import make_subplots

    figure = make_subplots(rows=1, cols=3, subplot_titles=("matching loss", "learned lr α (learns slowly)", "start epoch t"),
                           horizontal_spacing=0.07)
    for col, series in enumerate((live.losses, live.lrs, live.start_epochs), start=1):
        for stage in sorted({s for s, _, _ in series}):
            points = [(i, v) for s, i, v in series if s == stage]
            figure.add_trace(go.Scatter(x=[p[0] for p in points], y=[p[1] for p in points], name=f"S{stage + 1}",
                                        mode=_curve_mode(col, len(points)), legendgroup=f"S{stage + 1}",
                                        showlegend=col == 1, marker={"size": 4},
                                        line={"color": SERIES_COLOURS[stage % len(SERIES_COLOURS)], "width": 1.6}),
                             row=1, col=col)
        iterations = [i for _, i, _ in series]
        figure.update_xaxes(title_text="iteration", row=1, col=col, rangemode="tozero", **whole_ticks(iterations))
    if live.lrs:  # alpha learns slowly (a percent in a short run): keep a 1 % change looking like one
        values = [v for _, _, v in live.lrs]
        middle, spread = (max(values) + min(values)) / 2, max(values) - min(values)
        half = max(spread * 0.6, 0.05 * abs(middle), 1e-12)
        figure.update_yaxes(range=[middle - half, middle + half], row=1, col=2)
    figure.update_yaxes(row=1, col=3, rangemode="tozero", **whole_ticks([t for _, _, t in live.start_epochs]))
    figure.update_layout(height=height, margin={"l": 40, "r": 10, "t": 56, "b": 40}, template="plotly_white",
                         legend={"orientation": "h", "y": -0.25})
    return figure


def _curve_mode(col: int, points: int) -> str:
    """Start epochs are dots; loss and lr are lines, with dots while too few points draw a line."""
    return "markers" if col == 3 else "lines" if points >= 20 else "lines+markers"


def status_html(live: LiveState | None, queue_position: int = 0, error: str | None = None,
                start: str = "Start") -> str:
    """A status card: state, phase, a progress bar and the ETA (or `error` when there is no run to show; `start`:
    the label of the button that starts one)."""
    if live is None and error:
        return f"<div class='sm-status'><div class='sm-error'>{html.escape(error)}</div></div>"
    if live is None:
        return f"<div class='sm-status'>No run yet. Pick a preset and press <b>{html.escape(start)}</b>.</div>"
    if live.state == RunState.QUEUED:
        ahead = f"{queue_position} run{'s' if queue_position != 1 else ''} ahead" if queue_position > 0 else "next"
        if live.waiting_for:  # another process holds the run, the study or this home's queue
            return (f"<div class='sm-status'><b>Queued</b> ({ahead}): waiting, {html.escape(live.waiting_for)}. "
                    f"Apps and commands on one home train one run at a time.</div>")
        return f"<div class='sm-status'><b>Queued</b> ({ahead}): one run trains at a time.</div>"
    done, total = (live.iteration, live.iterations) if live.phase_kind is PhaseKind.DISTILLING else (live.progress or (0, 0))
    fraction = done / total if total else 0.0
    run_eta = live.run_eta()
    state = live.state.title()
    parts = [f"<b>{html.escape(state)}</b>" + ("" if live.phase.lower() == state.lower() else
                                             f" · {html.escape(live.phase)}")]
    if total and live.state.active:
        parts.append(f"{done}/{total}")
    if run_eta is not None:
        parts.append(f"<span title='this phase and the ones after it, at the pace measured in this run'>"
                     f"ETA {format_seconds(run_eta)}</span>")
    if live.executor and not live.executor.startswith("local"):
        parts.append(f"<span class='sm-executor'>jobs on {html.escape(live.executor)}</span>")
    if live.phase_kind is PhaseKind.DISTILLING and live.memory_mode:
        note = html.escape(live.memory_note or "", quote=True)
        parts.append(f"<span class='sm-memory' title='{note}'>memory: {html.escape(live.memory_mode)}</span>")
    if live.losses:
        parts.append(f"loss {live.losses[-1][2]:.4f}")
    if live.lrs:
        parts.append(f"α {live.lrs[-1][2]:.4g}")
    bar = (f"<div class='sm-bar'><div style='width:{100 * fraction:.1f}%'></div></div>"
           if total and live.state.active else "")
    errors = "".join(f"<div class='sm-error'>{html.escape(text)}</div>" for text in
                     ([live.error] if live.error else []) + live.messages)
    return f"<div class='sm-status'>{' · '.join(parts)}{bar}{errors}</div>"


def accuracy_markdown(result: EvalResult | None) -> str:
    """Final accuracies as a small markdown table, with the budget convention and any divergence."""
    if not result:
        return ""
    rows = ["| set | net | accuracy (mean ± std) | nets |", "|---|---|---|---|"]
    method = METHOD_NAMES.get(result.method, result.method)
    for name, title in (("synthetic", f"{method} IPC {result.ipc}"),
                        ("random_real", f"random real IPC {result.ipc}")):
        for arch, acc in result.sets.get(name, {}).items():
            rows.append(f"| {title} | {arch} | **{100 * acc['mean']:.2f} ± {100 * acc['std']:.2f} %** | "
                        f"{len(acc['values'])} |")
    notes = []
    if result.budget:
        notes.append(f"{method[:1].upper()}{method[1:]} under the **{result.budget}** budget convention.")
    if result.diverged:
        stages = ", ".join(f"S{k + 1}" for k in result.diverged)
        notes.append(f"⚠ {stages} diverged and kept earlier, sane images: this accuracy is not the method's.")
    return "\n".join(rows) + "".join(f"\n\n{note}" for note in notes)
