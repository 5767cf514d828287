"""Figures of a study's summary (study_summary.summarise): accuracy, paired differences, the fair gain over random real
and coupling, against IPC, or
against the outer iterations per subset when the study varies them (one group of lines per IPC then)."""
from __future__ import annotations

import math
from typing import Any, Callable

import plotly.graph_objects as go

from seqmatch_engine.core.config import METHODS, sequential_counterparts
from seqmatch_engine.core.study_spec import EVIDENCE_SEEDS
from views.palette import METHOD_COLOURS, METHOD_NAMES

LAYOUT = {"template": "plotly_white", "height": 380, "margin": {"l": 55, "r": 10, "t": 80, "b": 45},
          "legend": {"orientation": "h", "y": -0.2}}
GROUP_DASHES = ["solid", "dash", "dashdot", "longdash"]  # one per IPC on an iterations axis
GROUP_SYMBOLS = ["circle", "square", "triangle-up", "diamond"]
# Methods sit side by side at each x so that their markers and error bars do not hide each other: a shift in
# IPC on a linear axis, a factor on the logarithmic iterations axis.
SHIFTS = {**{m: i - (len(METHODS) - 1) / 2 for i, m in enumerate(METHODS)}, "random_real": 0.0, "random_real_soft": 0.0}
IPC_SHIFT = {method: 0.25 * step for method, step in SHIFTS.items()}
ITERATIONS_FACTOR = {method: 10 ** (0.009 * step) for method, step in SHIFTS.items()}
SEQUENTIAL = sequential_counterparts()  # each static method's sequential counterpart


def study_axis(summary: dict[str, Any]) -> str:
    """"iterations" when some IPC was run at several iteration counts, else "ipc"."""
    counts: dict[int, set] = {}
    for row in summary["cells"]:
        counts.setdefault(row["ipc"], set()).add(row.get("iterations"))
    return "iterations" if any(len(values) > 1 for values in counts.values()) else "ipc"


def _groups(summary: dict[str, Any]) -> list[tuple[str, list[dict[str, Any]]]]:
    """(label, rows) per line group: one unnamed group on the IPC axis, one per IPC on the iterations axis."""
    if study_axis(summary) == "ipc":
        return [("", summary["cells"])]
    ipcs = sorted({row["ipc"] for row in summary["cells"]})
    return [(f"IPC {ipc}" if len(ipcs) > 1 else "", [row for row in summary["cells"] if row["ipc"] == ipc])
            for ipc in ipcs]


def _x(summary: dict[str, Any], row: dict[str, Any], method: str) -> float:
    if study_axis(summary) == "ipc":
        return row["ipc"] + IPC_SHIFT[method]
    return row["iterations"] * ITERATIONS_FACTOR[method]


def _x_axis(summary: dict[str, Any]) -> dict[str, Any]:
    if study_axis(summary) == "ipc":
        ipcs = sorted({row["ipc"] for row in summary["cells"]})
        return {"title": "images per class (total)", "tickvals": ipcs, "range": [min(ipcs) - 3, max(ipcs) + 3],
                "zeroline": False, "showline": False}
    iterations = sorted({row["iterations"] for row in summary["cells"]})
    low, high = math.log10(min(iterations)), math.log10(max(iterations))
    return {"title": "outer iterations per subset", "type": "log", "tickvals": iterations,
            "ticktext": [f"{i:,}" for i in iterations], "range": [low - 0.15, high + 0.15], "zeroline": False,
            "showline": False}


def _name(method: str, group: str) -> str:
    return f"{METHOD_NAMES[method]} · {group}" if group else METHOD_NAMES[method]


def _hover(summary: dict[str, Any]) -> str:
    return "iterations" if study_axis(summary) == "iterations" else "IPC"


def _seed_note(summary: dict[str, Any]) -> str:
    """How many seeds stand behind the points (a range where a cell's methods have different counts), e.g.
    'mean ± std over 5 seeds at 100, 300 iterations; open markers: 1 seed, a demonstration' or 'mean ± std over
    4–5 seeds'. A point from fewer than EVIDENCE_SEEDS seeds is drawn open (`_symbols`)."""
    iterations = study_axis(summary) == "iterations"
    cells_by_count: dict[tuple[int, int], list[str]] = {}
    for row in summary["cells"]:
        stats = [row.get("random_real")] + [(m or {}).get("accuracy") for m in row["methods"].values()]
        counts = [stat["n"] for stat in stats if stat]
        if counts:
            cell = f"{row['iterations']:,}" if iterations else str(row["ipc"])
            cells_by_count.setdefault((min(counts), max(counts)), []).append(cell)

    def seeds(fewest: int, most: int) -> str:
        return f"{most} seed{'s' if most > 1 else ''}" if fewest == most else f"{fewest}–{most} seeds"

    def where(cells: list[str]) -> str:
        return f"{', '.join(cells)} iterations" if iterations else f"IPC {', '.join(cells)}"

    evidence = sorted(((count, cells) for count, cells in cells_by_count.items() if count[0] >= EVIDENCE_SEEDS),
                      key=lambda item: item[0][::-1], reverse=True)
    listed = "; ".join(f"{seeds(*count)} at {where(cells)}" for count, cells in evidence)
    few = [count for count in cells_by_count if count[0] < EVIDENCE_SEEDS]
    if not few:
        return "" if not evidence else f"mean ± std over {seeds(*evidence[0][0]) if len(evidence) == 1 else listed}"
    fewest, most = min(count[0] for count in few), max(count[1] for count in few)
    if evidence:
        return f"mean ± std over {listed}; open markers: {seeds(fewest, most)}, a demonstration"
    if most < 2:
        return "one seed: a demonstration, not evidence"
    return f"mean ± std over {seeds(fewest, most)}, a demonstration"


def _symbols(symbol: str, counts: list[int]) -> list[str]:
    """`symbol` for each point, open where fewer than EVIDENCE_SEEDS seeds stand behind it: a demonstration."""
    return [symbol if n >= EVIDENCE_SEEDS else f"{symbol}-open" for n in counts]


def _title(text: str, summary: dict[str, Any], note: str) -> str:
    """The title, what is plotted (`note`, short enough for a half-width plot) and, on a line of its own, how many
    seeds stand behind the points."""
    against = "iterations per subset" if study_axis(summary) == "iterations" else "IPC"
    return f"{text} vs {against}<br><sup>{note}</sup><br><sup>{_seed_note(summary)}</sup>"


def _methods(summary: dict[str, Any]) -> list[str]:
    """The study's methods in their order (older summaries: the ones their rows hold)."""
    return summary.get("methods") or [m for m in SHIFTS if not m.startswith("random")
                                      and any(m in row["methods"] for row in summary["cells"])]


def accuracy_figure(summary: dict[str, Any]) -> go.Figure:
    """Test accuracy (%) of each method (error bars: std over seeds), with random real (and, for soft-label
    methods, random real with soft labels) as references."""
    figure = go.Figure()
    references = ["random_real"] + (["random_real_soft"] if any(row.get("random_real_soft")
                                                                 for row in summary["cells"]) else [])
    for index, (group, rows) in enumerate(_groups(summary)):
        for method in _methods(summary) + references:
            points = []
            for row in rows:
                stat = row.get(method) if method in references else \
                    ((row["methods"].get(method) or {}).get("accuracy"))
                if stat:
                    points.append((_x(summary, row, method), 100 * stat["mean"], 100 * stat["std"], stat["n"],
                                   row["iterations"] if study_axis(summary) == "iterations" else row["ipc"]))
            if points:
                figure.add_trace(go.Scatter(
                    x=[p[0] for p in points], y=[p[1] for p in points], name=_name(method, group),
                    mode="lines+markers", error_y={"type": "data", "array": [p[2] for p in points], "visible": True},
                    customdata=[[p[3], p[4]] for p in points],
                    hovertemplate=f"{_hover(summary)} %{{customdata[1]}}: %{{y:.2f}} % (n=%{{customdata[0]}})",
                    marker={"symbol": _symbols(GROUP_SYMBOLS[index % len(GROUP_SYMBOLS)], [p[3] for p in points])},
                    line={"color": METHOD_COLOURS[method],
                          "dash": "dot" if method in references else GROUP_DASHES[index % len(GROUP_DASHES)]}))
    figure.update_layout(title=_title("Test accuracy", summary, f"{summary['budget']} budget"), xaxis=_x_axis(summary),
                         yaxis_title="test accuracy (%)", **LAYOUT)
    return figure


def paired_figure(summary: dict[str, Any]) -> go.Figure:
    """Sequential − static (points) per seed for each objective (SeqMatch − static MTT, SeqMatch-DATM − DATM), with
    the mean ± std over seeds and its 95 % interval (Student t over the paired seeds, where the summary has it);
    above 0: the sequential schedule better."""
    figure = go.Figure()
    objectives = [o for o in SEQUENTIAL if any((row.get("sequential_gain") or {}).get(o) or
                                               (o == "mtt" and row.get("paired")) for row in summary["cells"])]
    for index, (group, all_rows) in enumerate(_groups(summary)):
        for objective in objectives:
            sequential = SEQUENTIAL[objective]
            rows = [(row, paired) for row in all_rows
                    if (paired := (row.get("sequential_gain") or {}).get(objective)
                        or (row.get("paired") if objective == "mtt" else None))]
            label = " · ".join(p for p in ([METHOD_NAMES[sequential]] if len(objectives) > 1 else []) + [group] if p)
            label = f" · {label}" if label else ""
            colour = METHOD_COLOURS[sequential]
            intervals = [(_x(summary, row, sequential), paired["ci95"]) for row, paired in rows if paired.get("ci95")]
            if intervals:  # first, so drawn behind: a wide translucent bar, the range to compare with 0
                figure.add_trace(go.Scatter(
                    x=[v for x, _ in intervals for v in (x, x, None)],
                    y=[v for _, (low, high) in intervals for v in (100 * low, 100 * high, None)],
                    mode="lines", name=f"95 % interval{label}", hoverinfo="skip",
                    line={"color": colour, "width": 10}, opacity=0.25))
            figure.add_trace(go.Scatter(
                x=[_x(summary, row, "random_real") for row, paired in rows for _ in paired["values"]],
                y=[100 * v for _, paired in rows for v in paired["values"]], mode="markers", name=f"one seed{label}",
                text=[f"seed {s}" for _, paired in rows for s in paired["seeds"]],
                marker={"color": colour, "opacity": 0.45, "size": 8, "symbol": GROUP_SYMBOLS[index % len(GROUP_SYMBOLS)]}))
            figure.add_trace(go.Scatter(
                x=[_x(summary, row, sequential) for row, _ in rows], y=[100 * paired["mean"] for _, paired in rows],
                mode="lines+markers" if study_axis(summary) == "iterations" else "markers", name=f"mean ± std{label}",
                error_y={"type": "data", "array": [100 * paired["std"] for _, paired in rows]},
                line={"color": colour, "dash": GROUP_DASHES[index % len(GROUP_DASHES)]},
                marker={"color": colour, "symbol": _symbols("diamond", [paired["n"] for _, paired in rows]),
                        "size": 12}))
    figure.add_hline(y=0, line={"color": "#6b7280", "dash": "dash"})
    what = ("SeqMatch − static MTT" if set(objectives) <= {"mtt"} and set(_methods(summary)) <= {"mtt", "seqmatch"}
            else "sequential − static schedule")
    figure.update_layout(title=_title("Paired difference", summary, f"{what}, paired by seed; above 0: sequential "
                                                                     "better"),
                         xaxis=_x_axis(summary), yaxis_title="accuracy difference (points)", **LAYOUT)
    return figure


def _method_traces(summary: dict[str, Any], key: str, scale: float, hover: str | None = None,
                   hover_data: Callable[[dict[str, Any]], list] | None = None) -> list[go.Scatter]:
    """One line per method (and IPC group) of the statistic `key` of each cell's method result, mean × `scale` with
    the std as error bars; `hover_data(stat)` feeds `hover` (a plotly hovertemplate over customdata)."""
    traces = []
    for index, (group, rows) in enumerate(_groups(summary)):
        for method in _methods(summary):
            points = [(_x(summary, row, method), stat) for row in rows
                      if (result := row["methods"].get(method)) and (stat := result.get(key))]
            if not points:
                continue
            traces.append(go.Scatter(
                x=[x for x, _ in points], y=[scale * stat["mean"] for _, stat in points], name=_name(method, group),
                mode="lines+markers", error_y={"type": "data", "array": [scale * stat["std"] for _, stat in points],
                                               "visible": True},
                **({"customdata": [hover_data(stat) for _, stat in points], "hovertemplate": hover} if hover_data
                   else {}),
                marker={"symbol": _symbols(GROUP_SYMBOLS[index % len(GROUP_SYMBOLS)], [stat["n"] for _, stat in points])},
                line={"color": METHOD_COLOURS[method], "dash": GROUP_DASHES[index % len(GROUP_DASHES)]}))
    return traces


def fair_gain_figure(summary: dict[str, Any]) -> go.Figure:
    """Each method's gain over random real images trained the same way, labels included (points; error bars: std of
    the per-seed gains): the fair score, which a soft-label set cannot inflate with its experts' knowledge."""
    def labels(gain: dict[str, Any]) -> str:
        return "soft" if gain["over"] == "random_real_soft" else "hard"

    figure = go.Figure(_method_traces(
        summary, "gain", 100, "%{y:+.2f} points over random real with %{customdata[1]} labels (n=%{customdata[0]})",
        lambda gain: [gain["n"], labels(gain)]))
    soft = any((result.get("gain") or {}).get("over") == "random_real_soft"
               for row in summary["cells"] for result in row["methods"].values() if result)
    figure.add_hline(y=0, line={"color": "#6b7280", "dash": "dash"})
    note = f"minus random real images with the same labels{' (soft for soft-label methods)' if soft else ''}, " \
           "paired by seed"
    figure.update_layout(title=_title("Gain over random real", summary, note), xaxis=_x_axis(summary),
                         yaxis_title="accuracy gain (points)", **LAYOUT)
    return figure


def coupling_figure(summary: dict[str, Any]) -> go.Figure:
    """G1 coupling index (mean cosine between subsets' gradients, late in each run), per method."""
    figure = go.Figure(_method_traces(summary, "coupling", 1))
    note = "mean cosine between subsets' gradients late in a run; static MTT: nominal groups"
    if not figure.data:
        figure.add_annotation(text="No G1 records in this study's runs: coupling is recorded while distilling when "
                                   "the base config sets distill.diagnose_every > 0", x=0.5, y=0.5, xref="paper",
                              yref="paper", showarrow=False, font={"color": "#64748b"})
    figure.update_layout(title=_title("Coupling index", summary, note), xaxis=_x_axis(summary), yaxis_title="cosine",
                         **LAYOUT)
    return figure
