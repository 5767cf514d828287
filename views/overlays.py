"""Diagnostics of one or several runs as figures and a summary table (reads runs through the query API)."""
from __future__ import annotations

import plotly.graph_objects as go

from seqmatch_engine.interfaces.queries import RunView, StorageError, format_late_errors, mean_off_diagonal
from views.figures import g1_lines, g2_figure, g3_figure, g4_entries, g4_figure, stage_offsets
from views.palette import method_colour


def _number(value: float | None, percent: bool = False) -> str:
    if value is None:
        return "–"
    return f"{100 * value:.1f} %" if percent else f"{value:.3f}"


def summary_markdown(runs: list[tuple[str, RunView]]) -> str:
    """One table row per run: accuracy, coupling index, late-epoch matching error, easy/hard accuracy."""
    rows = ["| run | test accuracy | coupling index (G1) | late matching error (G2) | easy / hard accuracy (G4) |",
            "|---|---|---|---|---|"]
    for label, run in runs:
        values = run.diagnostics_summary()
        result = run.eval()
        acc = result.accuracy() if result else None
        accuracy = f"{100 * acc['mean']:.1f} ± {100 * acc['std']:.1f} %" if acc else "–"
        rows.append(f"| {label} | {accuracy} | {_number(values['coupling_index'])} | "
                    f"{format_late_errors(values['late_matching_error'])} | "
                    f"{_number(values['easy_accuracy_synthetic'], True)} / "
                    f"{_number(values['hard_accuracy_synthetic'], True)} |")
    return "\n".join(rows)


def coupling_over_time(runs: list[tuple[str, RunView]], problems: list[str]) -> go.Figure:
    """Mean between-group gradient cosine of every G1 record, one line per run (a damaged record file: its
    message in `problems`, no line)."""
    figure = go.Figure()
    for i, (label, run) in enumerate(runs):
        records = _readable(run.g1, problems) or []
        offsets = stage_offsets(records, [s.iterations for s in run.config().distill.subsets])
        points = [(offsets[record.stage] + record.iteration, value) for record in records
                  if len(record.matrix) >= 2 and (value := mean_off_diagonal(record.matrix)) is not None]
        figure.add_trace(go.Scatter(x=[p[0] for p in points], y=[p[1] for p in points], mode="lines", name=label,
                                    line={"color": method_colour(run.config().method, i)}))
    figure.update_layout(title="G1 coupling: mean cosine between subsets' gradients", template="plotly_white",
                         xaxis_title="outer iteration (all stages)", yaxis_title="cosine", height=320,
                         margin={"l": 50, "r": 10, "t": 50, "b": 40})
    return figure


def _readable(read, problems: list[str]):
    """read(), or None with its error's message (which names the file and the way out) added to `problems`."""
    try:
        return read()
    except StorageError as error:
        problems.append(str(error))
        return None


def comparison_overlays(runs: list[tuple[str, RunView]]):
    """(summary markdown, G1 coupling lines, G2 overlay, G4 bars) for labelled runs."""
    if not runs:
        return "", None, None, None
    problems: list[str] = []
    g2 = [(label, found) for label, run in runs if (found := _readable(run.g2, problems))]
    g4 = [entry for i, (label, run) in enumerate(runs) if (found := _readable(run.g4, problems))
          for entry in g4_entries(found, label, baseline=i == 0)]
    hint = ("" if g2 and g4 else "\n\nG2 and G4 appear once computed: Diagnostics tab → *Compute*, or "
            "`python -m seqmatch_engine diagnose RUN`.")
    coupling = coupling_over_time(runs, problems)
    hint += "".join(f"\n\n**{problem}**" for problem in problems)
    return (summary_markdown(runs) + hint, coupling, g2_figure(g2) if g2 else None,
            g4_figure(g4) if g4 else None)


def run_figures(run: RunView):
    """(G1 lines, G3 embedding figure) of one run, None where not computed yet."""
    records = run.g1()
    stage_iterations = [s.iterations for s in run.config().distill.subsets]
    embedding = run.embedding()
    return (g1_lines(records, stage_iterations) if records else None,
            g3_figure(embedding) if embedding is not None else None)
