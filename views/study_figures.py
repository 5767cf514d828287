"""Figures of a study's summary (study.summarise): accuracy vs IPC, paired differences, coupling vs IPC."""
from __future__ import annotations

from typing import Any

import plotly.graph_objects as go

from .palette import METHOD_COLOURS, METHOD_NAMES

LAYOUT = {"template": "plotly_white", "height": 360, "margin": {"l": 55, "r": 10, "t": 60, "b": 45},
          "legend": {"orientation": "h", "y": -0.2}}


def _seed_note(summary: dict[str, Any]) -> str:
    """How many seeds stand behind each IPC's points (the most any method has there), e.g. 'mean ± std over
    3 seeds at IPC 10, 20; 1 seed at IPC 30 (a demonstration)'."""
    ipcs_by_count: dict[int, list[int]] = {}
    for row in summary["cells"]:
        stats = [row.get("random_real")] + [(m or {}).get("accuracy") for m in row["methods"].values()]
        counts = [stat["n"] for stat in stats if stat]
        if counts:
            ipcs_by_count.setdefault(max(counts), []).append(row["ipc"])
    if len(ipcs_by_count) <= 1:
        seeds = next(iter(ipcs_by_count), 0)
        return "one seed: a demonstration, not evidence" if seeds < 2 else f"mean ± std over {seeds} seeds"
    parts = [f"{n} seed{'s' if n > 1 else ''} at IPC {', '.join(map(str, sorted(ipcs)))}"
             + (" (a demonstration)" if n < 2 else "") for n, ipcs in sorted(ipcs_by_count.items(), reverse=True)]
    return "mean ± std over " + "; ".join(parts)


def accuracy_vs_ipc(summary: dict[str, Any]) -> go.Figure:
    """Test accuracy (%) of static MTT, SeqMatch and random real against total IPC, error bars = std over seeds."""
    figure = go.Figure()
    for method in ("mtt", "seqmatch", "random_real"):
        points = []
        for row in summary["cells"]:
            stat = row["random_real"] if method == "random_real" else (row["methods"].get(method) or {}).get("accuracy")
            if stat:
                points.append((row["ipc"], 100 * stat["mean"], 100 * stat["std"], stat["n"]))
        if points:
            figure.add_trace(go.Scatter(
                x=[p[0] for p in points], y=[p[1] for p in points], name=METHOD_NAMES[method], mode="lines+markers",
                error_y={"type": "data", "array": [p[2] for p in points], "visible": True},
                customdata=[p[3] for p in points], hovertemplate="IPC %{x}: %{y:.2f} % (n=%{customdata})",
                line={"color": METHOD_COLOURS[method], "dash": "dot" if method == "random_real" else "solid"}))
    figure.update_layout(title=f"Test accuracy vs IPC<br><sup>{summary['budget']} budget; {_seed_note(summary)}</sup>",
                         xaxis=_ipc_axis(summary), yaxis_title="test accuracy (%)", **LAYOUT)
    return figure


def _ipc_axis(summary: dict[str, Any]) -> dict[str, Any]:
    ipcs = [row["ipc"] for row in summary["cells"]]
    return {"title": "images per class (total)", "tickvals": ipcs, "range": [min(ipcs) - 3, max(ipcs) + 3]}


def paired_differences(summary: dict[str, Any]) -> go.Figure:
    """SeqMatch − static MTT (points) per seed and IPC, with the mean ± std over seeds; above 0: SeqMatch better."""
    figure = go.Figure()
    rows = [row for row in summary["cells"] if row.get("paired")]
    figure.add_trace(go.Scatter(
        x=[row["ipc"] for row in rows for _ in row["paired"]["values"]],
        y=[100 * v for row in rows for v in row["paired"]["values"]], mode="markers", name="one seed",
        text=[f"seed {s}" for row in rows for s in row["paired"]["seeds"]],
        marker={"color": METHOD_COLOURS["seqmatch"], "opacity": 0.45, "size": 8}))
    figure.add_trace(go.Scatter(
        x=[row["ipc"] for row in rows], y=[100 * row["paired"]["mean"] for row in rows], mode="markers",
        name="mean ± std", error_y={"type": "data", "array": [100 * row["paired"]["std"] for row in rows]},
        marker={"color": METHOD_COLOURS["seqmatch"], "symbol": "diamond", "size": 12}))
    figure.add_hline(y=0, line={"color": "#6b7280", "dash": "dash"})
    figure.update_layout(title="SeqMatch − static MTT, paired by seed<br><sup>same experts, evaluation nets and "
                               "baseline; above 0: SeqMatch better</sup>",
                         xaxis=_ipc_axis(summary), yaxis_title="accuracy difference (points)", **LAYOUT)
    return figure


def coupling_vs_ipc(summary: dict[str, Any]) -> go.Figure:
    """G1 coupling index (mean cosine between subsets' gradients, late in each run) against IPC, per method."""
    figure = go.Figure()
    for method in ("mtt", "seqmatch"):
        points = [(row["ipc"], m["coupling"]) for row in summary["cells"]
                  if (m := row["methods"].get(method)) and m.get("coupling")]
        if points:
            figure.add_trace(go.Scatter(
                x=[p[0] for p in points], y=[p[1]["mean"] for p in points], name=METHOD_NAMES[method],
                mode="lines+markers", error_y={"type": "data", "array": [p[1]["std"] for p in points], "visible": True},
                line={"color": METHOD_COLOURS[method]}))
    figure.update_layout(title="Coupling index vs IPC<br><sup>mean cosine between subsets' gradients, late in each run; "
                               f"static MTT: nominal groups; {_seed_note(summary)}</sup>", xaxis=_ipc_axis(summary),
                         yaxis_title="cosine", **LAYOUT)
    return figure
