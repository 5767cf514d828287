"""Plotly figures of the coupling diagnostics: typed records in (G1Record, G2Result, G4Result, an Embedding),
Figure out.

Nothing here computes a diagnostic or touches files; see seqmatch_engine.diagnostics for the
definitions of G1-G4. Long series are downsampled evenly (first and last point kept).
"""
from __future__ import annotations

from dataclasses import dataclass

import plotly.graph_objects as go

from seqmatch_engine.interfaces.queries import Embedding, G1Record, G2Result, G4Result, NetAccuracies
from views.palette import FAMILY_DASHES, SERIES_COLOURS, method_colour

CLASS_COLOURS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
                 "#bcbd22", "#17becf", "#393b79", "#637939", "#8c6d31", "#843c39", "#7b4173", "#3182bd"]
SYMBOLS = ["circle", "diamond", "square", "triangle-up", "x", "star", "pentagon", "triangle-down", "cross",
           "hexagram"]
MAX_POINTS = 400   # points per line
MAX_FRAMES = 60    # frames of a slider


def downsample(count: int, limit: int) -> list[int]:
    """At most `limit` evenly spread indices into range(count), always keeping the first and the last."""
    if count <= limit:
        return list(range(count))
    if limit <= 1:
        return [count - 1]
    return sorted({round(i * (count - 1) / (limit - 1)) for i in range(limit)})


def _colour(palette: list[str], index: int) -> str:
    return palette[index % len(palette)]


# -- G1 -------------------------------------------------------------------------------------------------
def _heatmap_trace(record: G1Record) -> go.Heatmap:
    names = record.groups
    text = [["" if v is None else f"{v:.2f}" for v in row] for row in record.matrix]
    return go.Heatmap(z=record.matrix, x=names, y=names, zmin=-1, zmax=1, colorscale="RdBu", reversescale=True,
                      text=text, texttemplate="%{text}", colorbar={"title": "cosine"},
                      hovertemplate="%{y} vs %{x}: %{z:.3f}<extra></extra>")


def _record_title(record: G1Record) -> str:
    return f"S{record.stage + 1}, iteration {record.iteration}"


def g1_heatmap(record: G1Record) -> go.Figure:
    """One G1 record -> K x K heatmap of between-group gradient cosines (1 trace)."""
    figure = go.Figure(_heatmap_trace(record))
    figure.update_layout(title=f"Gradient similarity between groups ({_record_title(record)})",
                         xaxis_title="group", yaxis_title="group", yaxis_autorange="reversed")
    return figure


def g1_heatmap_slider(records: list[G1Record], max_frames: int = MAX_FRAMES) -> go.Figure:
    """G1 records with at least two groups -> the heatmap with a time slider (one frame per record, at most
    `max_frames`), opening on the last record (a 1 x 1 "S1 vs S1" matrix says nothing, so those are left out)."""
    records = [r for r in records if len(r.groups) >= 2]
    if not records:
        return _empty("No G1 record with two groups yet (they appear once a second subset, or nominal group, exists)")
    chosen = [records[i] for i in downsample(len(records), max_frames)]
    last = len(chosen) - 1
    figure = go.Figure(_heatmap_trace(chosen[last]),
                       frames=[go.Frame(data=[_heatmap_trace(r)], name=str(i)) for i, r in enumerate(chosen)])
    steps = [{"label": _record_title(r), "method": "animate",
              "args": [[str(i)], {"mode": "immediate", "frame": {"duration": 0, "redraw": True}}]}
             for i, r in enumerate(chosen)]
    figure.update_layout(title="Gradient similarity between groups", xaxis_title="group", yaxis_title="group",
                         yaxis_autorange="reversed", margin={"t": 60, "b": 110},
                         sliders=[{"steps": steps, "active": last, "currentvalue": {"prefix": ""}, "y": -0.12}])
    return figure


def stage_offsets(records: list[G1Record], stage_iterations: list[int] | None = None) -> dict[int, int]:
    """Iterations before each stage: given lengths, or each earlier stage's last recorded iteration."""
    stages = sorted({r.stage for r in records})
    offsets, total = {}, 0
    for stage in range(max(stages, default=-1) + 1):
        offsets[stage] = total
        if stage_iterations is not None and stage < len(stage_iterations):
            total += stage_iterations[stage]
        else:
            total += max((r.iteration for r in records if r.stage == stage), default=0)
    return offsets


def g1_lines(records: list[G1Record], stage_iterations: list[int] | None = None,
             max_points: int = MAX_POINTS) -> go.Figure:
    """G1 records -> lines over all outer iterations: one per pair of groups (between-group cosine,
    solid) and one per group (mean within-class cosine, dotted); stage boundaries as vertical lines."""
    if not records:
        return _empty("No G1 records (set distill.diagnose_every > 0 before distilling)")
    chosen = [records[i] for i in downsample(len(records), max_points)]
    offsets = stage_offsets(records, stage_iterations)
    x = [offsets[r.stage] + r.iteration for r in chosen]
    names = max((r.groups for r in records), key=len)
    figure = go.Figure()
    for a in range(len(names)):
        for b in range(a + 1, len(names)):
            y = [r.matrix[a][b] if len(r.groups) > b else None for r in chosen]
            figure.add_trace(go.Scatter(x=x, y=y, mode="lines", name=f"cos({names[a]}, {names[b]})",
                                        line={"color": _colour(SERIES_COLOURS, a * len(names) + b)}))
    for a, name in enumerate(names):
        y = [r.within[a] if len(r.groups) > a else None for r in chosen]
        figure.add_trace(go.Scatter(x=x, y=y, mode="lines", name=f"within {name}",
                                    line={"dash": "dot", "color": _colour(SERIES_COLOURS, a)}))
    for stage, offset in offsets.items():
        if stage > 0:
            figure.add_vline(x=offset, line={"color": "#9ca3af", "dash": "dash"},
                             annotation_text=f"S{stage + 1}", annotation_position="top left")
    figure.update_layout(title="Gradient similarity over distillation", xaxis_title="outer iteration (all stages)",
                         yaxis_title="cosine similarity", yaxis_range=[-1.05, 1.05])
    return figure


# -- G2 -------------------------------------------------------------------------------------------------
FAMILY_NAMES = {1: "stage-1 experts", 2: "experts pre-trained on U1", 3: "experts pre-trained on U2"}


def g2_figure(results: list[tuple[str, G2Result]], max_points: int = MAX_POINTS) -> go.Figure:
    """(label, G2 result) pairs -> L(t) by start epoch: one colour per method, one dash per family of held-out
    trajectories, the spread over experts and draws as error bars."""
    figure = go.Figure()
    for i, (label, result) in enumerate(results):
        for family in result.families:
            keep = downsample(len(family.start_epochs), max_points)
            k = family.family
            figure.add_trace(go.Scatter(
                x=[family.start_epochs[j] for j in keep], y=[family.mean[j] for j in keep],
                error_y={"type": "data", "array": [family.std[j] for j in keep], "visible": True},
                mode="lines+markers", name=f"{label or result.method} · {FAMILY_NAMES.get(k, f'family {k}')}",
                line={"color": method_colour(result.method, i), "dash": FAMILY_DASHES[(k - 1) % 4]}))
    figure.update_layout(title="G2: matching error by start epoch of held-out trajectories",
                         xaxis_title="start epoch t (of each family's trajectories)",
                         yaxis_title="normalised matching loss L(t)", legend={"orientation": "h", "y": -0.25})
    return figure


# -- G3 -------------------------------------------------------------------------------------------------
def _categories(embedding: Embedding) -> list[str]:
    """One marker category per point: "real", or the subset ("S1"), prefixed by source when runs are overlaid."""
    sources = {s for s, k in zip(embedding.sources, embedding.kinds, strict=True) if k != "real"}
    return ["real" if k == "real" else (f"{s} {k}" if len(sources) > 1 else k)
            for s, k in zip(embedding.sources, embedding.kinds, strict=True)]


def _g3_traces(embedding: Embedding, epoch: int, order: list[str], categories: list[str]) -> list[go.Scatter]:
    rows = (embedding.epoch == epoch).nonzero().flatten().tolist()
    traces = []
    for c, category in enumerate(order):
        mine = [r for r in rows if categories[int(embedding.point[r])] == category]
        labels = [int(embedding.label[r]) for r in mine]
        traces.append(go.Scatter(
            x=[float(embedding.coords[r, 0]) for r in mine], y=[float(embedding.coords[r, 1]) for r in mine],
            mode="markers", name=category, legendgroup="points",
            marker={"symbol": SYMBOLS[c % len(SYMBOLS)], "size": 6 if category == "real" else 10,
                    "opacity": 0.45 if category == "real" else 0.95,
                    "color": [_colour(CLASS_COLOURS, y) for y in labels],
                    "line": {"width": 0 if category == "real" else 1, "color": "#111827"}},
            text=[f"{embedding.class_names[y]} · {category}" for y in labels],
            hovertemplate="%{text}<extra></extra>"))
    return traces


def g3_figure(embedding: Embedding) -> go.Figure:
    """G3 embedding -> scatter with an epoch slider and play button (one frame per expert epoch).

    Colour = class, marker symbol = real / subset (and source when several runs are overlaid).
    Traces: one per marker category, then one legend-only entry per class.
    """
    categories = _categories(embedding)
    order = list(dict.fromkeys(["real"] * ("real" in categories) + categories))
    first = embedding.epochs[0]
    figure = go.Figure(_g3_traces(embedding, first, order, categories))
    for y, name in enumerate(embedding.class_names):
        figure.add_trace(go.Scatter(x=[None], y=[None], mode="markers", name=name, legendgroup="classes",
                                    marker={"color": _colour(CLASS_COLOURS, y), "size": 9}))
    figure.frames = [go.Frame(data=_g3_traces(embedding, e, order, categories), name=str(e),
                              traces=list(range(len(order)))) for e in embedding.epochs]
    low, high = embedding.coords.min(0).values, embedding.coords.max(0).values
    pad = 0.05 * (high - low).clamp_min(1e-6)
    axis = "PC" if embedding.reducer == "pca" else embedding.reducer.upper()
    animate = {"mode": "immediate", "frame": {"duration": 700, "redraw": True}, "transition": {"duration": 300}}
    figure.update_layout(
        title={"text": f"Features across expert epochs<br><sup>penultimate layer, {embedding.reducer.upper()} fitted "
                       f"jointly over all epochs</sup>", "x": 0.02},
        height=620, margin={"t": 80, "b": 130, "r": 10},
        legend={"orientation": "h", "y": -0.32, "x": 0, "font": {"size": 11}},
        xaxis={"title": f"{axis} 1", "range": [float(low[0] - pad[0]), float(high[0] + pad[0])]},
        yaxis={"title": f"{axis} 2", "range": [float(low[1] - pad[1]), float(high[1] + pad[1])]},
        updatemenus=[{"type": "buttons", "showactive": False, "x": 0, "y": -0.13, "xanchor": "left", "yanchor": "top",
                      "buttons": [{"label": "▶ play", "method": "animate", "args": [None, animate]}]}],
        sliders=[{"x": 0.12, "len": 0.88, "y": -0.09, "yanchor": "top", "currentvalue": {"prefix": "expert epoch "},
                  "steps": [{"label": str(e), "method": "animate",
                             "args": [[str(e)], {**animate, "transition": {"duration": 0}}]}
                            for e in embedding.epochs]}])
    return figure


# -- G4 -------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class G4Bars:
    """One group of G4 bars: a label, the method it is coloured by, its nets' accuracies on easy and hard images."""

    label: str
    method: str | None
    easy: NetAccuracies
    hard: NetAccuracies


def g4_entries(result: G4Result, label: str | None = None, baseline: bool = True) -> list[G4Bars]:
    """A run's G4 -> the bars of its set and (optionally) of random real images."""
    synthetic = result.sets["synthetic"]
    entries = [G4Bars(label or result.method, result.method, synthetic.easy, synthetic.hard)]
    if baseline and "random_real" in result.sets:
        real = result.sets["random_real"]
        entries.append(G4Bars("random real", "random_real", real.easy, real.hard))
    return entries


def g4_figure(entries: list[G4Bars]) -> go.Figure:
    """Bar groups -> grouped bars (one trace per entry) in %, sample std over nets as error bars."""
    figure = go.Figure()
    for i, entry in enumerate(entries):
        parts = (entry.easy, entry.hard)
        means = [None if p.mean is None else 100 * p.mean for p in parts]
        stds = [0 if p.std is None else 100 * p.std for p in parts]
        figure.add_trace(go.Bar(x=["easy test images", "hard test images"], y=means, name=entry.label,
                                error_y={"type": "data", "array": stds, "visible": True},
                                marker_color=method_colour(entry.method, i)))
    figure.update_layout(title="Accuracy on easy and hard test images", barmode="group",
                         xaxis_title="test images (split by expert hardness)", yaxis_title="test accuracy (%)")
    return figure


def _empty(message: str) -> go.Figure:
    figure = go.Figure()
    figure.add_annotation(text=message, showarrow=False, x=0.5, y=0.5, xref="paper", yref="paper")
    figure.update_layout(xaxis_visible=False, yaxis_visible=False)
    return figure
