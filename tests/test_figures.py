"""views/figures.py: each builder turns hand-made diagnostics data into the expected plotly figure."""
from __future__ import annotations

from dataclasses import replace

import plotly.graph_objects as go
import pytest
import torch

from seqmatch_engine.diagnostics.features import Embedding
from seqmatch_engine.interfaces.queries import G1Record, G2Family, G2Result, G4Result, NetAccuracies
from seqmatch_engine.storage.diagnostic_records import SetAccuracies
from views.figures import (
    MAX_FRAMES,
    downsample,
    g1_heatmap,
    g1_heatmap_slider,
    g1_lines,
    g2_figure,
    g3_figure,
    g4_entries,
    g4_figure,
    stage_offsets,
)
from views.palette import METHOD_COLOURS
from views.study_figures import accuracy_figure, coupling_figure, fair_gain_figure, paired_figure, study_axis


def g1_records(per_stage: int = 4) -> list[G1Record]:
    """SeqMatch-like records: stage 0 with S1 only, stage 1 with S1 and S2."""
    first = [G1Record(0, i, ["S1"], [2], [[1.0]], [0.1]) for i in range(1, per_stage + 1)]
    second = [G1Record(1, i, ["S1", "S2"], [2, 2], [[1.0, 0.3], [0.3, 1.0]], [0.2, None])
              for i in range(1, per_stage + 1)]
    return first + second


def test_downsample_keeps_ends_and_limit():
    assert downsample(5, 10) == [0, 1, 2, 3, 4]
    picked = downsample(1000, 7)
    assert len(picked) == 7 and picked[0] == 0 and picked[-1] == 999
    assert downsample(3, 1) == [2]


def test_g1_heatmap_single_record():
    figure = g1_heatmap(g1_records()[-1])
    assert isinstance(figure, go.Figure) and len(figure.data) == 1
    heatmap = figure.data[0]
    assert heatmap.type == "heatmap" and list(heatmap.x) == ["S1", "S2"] and heatmap.zmin == -1 and heatmap.zmax == 1
    assert figure.layout.xaxis.title.text == "group" and figure.layout.yaxis.title.text == "group"
    assert "S2, iteration 4" in figure.layout.title.text


def test_g1_heatmap_slider_shows_records_with_two_groups_and_opens_on_the_last():
    figure = g1_heatmap_slider(g1_records())  # stage 0 has S1 alone (1 x 1): left out
    assert len(figure.frames) == 4 and len(figure.layout.sliders[0].steps) == 4
    assert figure.layout.sliders[0].steps[0].label == "S2, iteration 1"
    assert figure.layout.sliders[0].active == 3 and list(figure.data[0].x) == ["S1", "S2"]
    many = g1_heatmap_slider(g1_records(per_stage=100))
    assert len(many.frames) == MAX_FRAMES
    for empty in (g1_heatmap_slider([]), g1_heatmap_slider(g1_records()[:4])):
        assert len(empty.data) == 0 and "two groups" in empty.layout.annotations[0].text


def test_g1_lines_pairs_within_and_stage_offsets():
    records = g1_records()
    assert stage_offsets(records) == {0: 0, 1: 4}
    assert stage_offsets(records, [10, 10]) == {0: 0, 1: 10}
    figure = g1_lines(records)
    names = [trace.name for trace in figure.data]
    assert names == ["cos(S1, S2)", "within S1", "within S2"]
    assert list(figure.data[0].x) == [1, 2, 3, 4, 5, 6, 7, 8]
    assert list(figure.data[0].y) == [None] * 4 + [0.3] * 4
    assert list(figure.data[2].y) == [None] * 8
    assert len(figure.layout.shapes) == 1  # one stage boundary
    assert figure.layout.xaxis.title.text == "outer iteration (all stages)"
    assert figure.layout.yaxis.title.text == "cosine similarity"
    long = g1_lines(g1_records(per_stage=1000), max_points=50)
    assert len(long.data[0].x) == 50 and long.data[0].x[-1] == 2000


def family(k: int, mean: list[float], std: list[float]) -> G2Family:
    return G2Family(list(range(len(mean))), mean, std, [mean], k, [k - 1] * len(mean), None, mean[-1])


def g2_result(method: str, families: list[G2Family]) -> G2Result:
    return G2Result(method, "run", 2, families, [0.01], 2, 1, 2, 10, "key", 2)


def test_g2_figure_one_line_per_run_and_family_coloured_by_method():
    mtt = g2_result("mtt", [family(1, [0.5, 0.6, 0.9], [0.1, 0.1, 0.2]), family(2, [0.7, 0.8], [0, 0])])
    seq = g2_result("seqmatch", [family(1, [0.5, 0.5, 0.6], [0.1, 0.0, 0.1])])
    figure = g2_figure([("", mtt), ("SeqMatch", seq)])
    assert [trace.name for trace in figure.data] == ["mtt · stage-1 experts", "mtt · experts pre-trained on U1",
                                                     "SeqMatch · stage-1 experts"]
    assert list(figure.data[0].error_y.array) == [0.1, 0.1, 0.2]
    assert [t.line.color for t in figure.data] == [METHOD_COLOURS["mtt"]] * 2 + [METHOD_COLOURS["seqmatch"]]
    assert [t.line.dash for t in figure.data] == ["solid", "dash", "solid"]
    assert figure.layout.xaxis.title.text == "start epoch t (of each family's trajectories)"
    assert figure.layout.yaxis.title.text == "normalised matching loss L(t)"
    long = g2_result("mtt", [family(1, [1.0] * 1000, [0.0] * 1000)])
    assert len(g2_figure([("", long)], max_points=100).data[0].x) == 100


def stat(values: list[float], over: str | None = None) -> dict:
    """A summary statistic over seeds as study_summary writes it (mean, sample std, n, values), computed here;
    `over`: the baseline a gain is measured against."""
    mean = sum(values) / len(values)
    std = (sum((v - mean) ** 2 for v in values) / (len(values) - 1)) ** 0.5 if len(values) > 1 else 0.0
    return {"mean": mean, "std": std, "n": len(values), "values": values, **({"over": over} if over else {})}


def study_summary() -> dict:
    """Two cells; IPC 20 has two seeds, IPC 10 one SeqMatch seed only (unpaired)."""
    return {"study": "s", "budget": "per-image", "seeds": [0, 1], "cells": [
        {"ipc": 10, "subsets": 2, "methods": {"seqmatch": {"accuracy": stat([0.7]), "coupling": stat([0.3])}},
         "random_real": stat([0.6]), "paired": None, "controls": {}},
        {"ipc": 20, "subsets": 2, "methods": {"mtt": {"accuracy": stat([0.8, 0.82]), "coupling": stat([0.5, 0.7])},
                                              "seqmatch": {"accuracy": stat([0.79, 0.83]), "coupling": None}},
         "random_real": stat([0.7, 0.72]), "paired": {**stat([-0.01, 0.01]), "seeds": [0, 1]}, "controls": {}}]}


def test_study_figures_have_one_trace_per_method_with_error_bars():
    summary = study_summary()
    figure = accuracy_figure(summary)
    assert [t.name for t in figure.data] == ["static MTT", "SeqMatch", "random real"]
    assert list(figure.data[0].x) == [19.625] and list(figure.data[1].x) == [9.875, 19.875]  # side by side
    assert list(figure.data[0].y) == [81.0] and list(figure.data[0].error_y.array) == [pytest.approx(100 * 0.02 / 2 ** 0.5)]
    assert [t.line.color for t in figure.data] == [METHOD_COLOURS[m] for m in ("mtt", "seqmatch", "random_real")]
    title = figure.layout.title.text  # IPC 20 has 2 seeds, IPC 10 only one
    assert "mean ± std over 1–2 seeds, a demonstration" in title
    assert "per-image budget" in title
    paired = paired_figure(summary)
    assert list(paired.data[0].x) == [20, 20] and list(paired.data[0].y) == [-1.0, 1.0]
    assert study_axis(summary) == "ipc" and figure.layout.xaxis.title.text == "images per class (total)"
    assert list(paired.data[1].y) == [0.0] and paired.data[1].name == "mean ± std"
    assert len(paired.data) == 2, "a summary without intervals draws none"
    with_interval = {**summary, "cells": [summary["cells"][0], {**summary["cells"][1], "paired": {
        **summary["cells"][1]["paired"], "ci95": [-0.127, 0.127]}}]}
    interval, _, mean = paired_figure(with_interval).data  # the interval first: drawn behind the seeds and mean
    assert interval.name == "95 % interval" and list(interval.x) == [mean.x[0], mean.x[0], None]
    assert list(interval.y) == [pytest.approx(-12.7), pytest.approx(12.7), None]
    coupling = coupling_figure(summary)
    assert [t.name for t in coupling.data] == ["static MTT", "SeqMatch"]
    assert list(coupling.data[0].y) == [pytest.approx(0.6)] and list(coupling.data[1].x) == [9.875]
    assert "demonstration" in coupling.layout.title.text
    both_seeds = {**summary, "cells": summary["cells"][1:]}
    assert "mean ± std over 2 seeds, a demonstration</sup>" in accuracy_figure(both_seeds).layout.title.text
    uneven = {**summary, "cells": [{**summary["cells"][1], "random_real": {**summary["cells"][1]["random_real"],
                                                                            "n": 3}}]}
    assert "mean ± std over 2–3 seeds, a demonstration</sup>" in accuracy_figure(uneven).layout.title.text
    one_seed = {**summary, "cells": summary["cells"][:1]}
    assert "one seed: a demonstration, not evidence" in accuracy_figure(one_seed).layout.title.text


def test_a_study_over_iterations_draws_accuracy_and_differences_against_iterations_per_ipc():
    base = study_summary()["cells"][1]
    cells = [{**base, "iterations": 100}, {**base, "iterations": 1000, "paired": None},
             {**base, "ipc": 50, "iterations": 300}]
    summary = {**study_summary(), "cells": cells}
    assert study_axis(summary) == "iterations"
    figure = accuracy_figure(summary)
    names = [t.name for t in figure.data]
    assert names[:3] == ["static MTT · IPC 20", "SeqMatch · IPC 20", "random real · IPC 20"]
    assert names[3:] == ["static MTT · IPC 50", "SeqMatch · IPC 50", "random real · IPC 50"]
    mtt, seqmatch = figure.data[0], figure.data[1]
    assert list(mtt.x) == pytest.approx([100, 1000], rel=0.05) and mtt.x[0] < seqmatch.x[0] < 100  # side by side
    assert figure.layout.xaxis.type == "log" and list(figure.layout.xaxis.tickvals) == [100, 300, 1000]
    assert "vs iterations per subset" in figure.layout.title.text
    paired = paired_figure(summary)
    assert list(paired.data[0].x) == [100, 100] and len(paired.data[1].x) == 1  # 1000: not paired
    assert paired.data[1].name == "mean ± std · IPC 20"
    assert "2 seeds" in figure.layout.title.text
    one_ipc = {**summary, "cells": cells[:2]}
    assert [t.name for t in accuracy_figure(one_ipc).data] == ["static MTT", "SeqMatch", "random real"]


def test_a_point_from_fewer_than_three_seeds_is_drawn_open_and_the_title_says_it_is_a_demonstration():
    """Three seeds at 100 and 300 iterations, one at 1,000: the 1,000 points (accuracy, paired mean, fair gain,
    coupling) are open markers, the others filled, so a line from evidence to a demonstration does not read as a
    trend; with 3 seeds everywhere nothing is open and no demonstration is named."""
    def cell(iterations, seeds):
        mtt, seqmatch = [0.82 + 0.001 * s for s in seeds], [0.83 - 0.001 * s for s in seeds]
        return {"ipc": 20, "subsets": 2, "iterations": iterations, "random_real": stat([0.78] * len(seeds)),
                "controls": {}, "paired": {**stat([b - a for a, b in zip(mtt, seqmatch)]), "seeds": seeds},
                "methods": {m: {"accuracy": stat(v), "gain": stat([x - 0.78 for x in v], "random_real"),
                                "coupling": stat([0.4] * len(v))} for m, v in (("mtt", mtt), ("seqmatch", seqmatch))}}

    summary = {"study": "s", "budget": "per-image", "seeds": [0, 1, 2], "methods": ["mtt", "seqmatch"],
               "cells": [cell(100, [0, 1, 2]), cell(300, [0, 1, 2]), cell(1000, [0])]}
    accuracy = accuracy_figure(summary)
    assert [list(t.marker.symbol) for t in accuracy.data] == [["circle", "circle", "circle-open"]] * 3
    assert "mean ± std over 3 seeds at 100, 300 iterations; open markers: 1 seed, a demonstration</sup>" \
        in accuracy.layout.title.text
    five = {**summary, "cells": [{**c, "random_real": {**c["random_real"], "n": 5}} for c in summary["cells"][:1]]
            + summary["cells"][1:]}
    assert "mean ± std over 3–5 seeds at 100 iterations; 3 seeds at 300 iterations; open markers: 1 seed, a " \
        "demonstration</sup>" in accuracy_figure(five).layout.title.text
    mean = paired_figure(summary).data[-1]
    assert mean.name == "mean ± std" and list(mean.marker.symbol) == ["diamond", "diamond", "diamond-open"]
    for figure in (fair_gain_figure(summary), coupling_figure(summary)):
        assert [list(t.marker.symbol) for t in figure.data] == [["circle", "circle", "circle-open"]] * 2
    evidence = {**summary, "cells": summary["cells"][:2]}
    assert all("open" not in symbol for t in accuracy_figure(evidence).data for symbol in t.marker.symbol)
    title = accuracy_figure(evidence).layout.title.text
    assert "mean ± std over 3 seeds</sup>" in title and "demonstration" not in title


def test_the_fair_gain_figure_plots_each_methods_gain_over_its_own_random_real_baseline():
    """Per method, the per-seed gain over random real trained the same way (soft labels for a soft-label method);
    a method without a gain (not yet paired) draws nothing, and the note says when soft baselines are used."""
    cell = {"ipc": 20, "subsets": 2, "random_real": None, "controls": {}, "methods": {
        "mtt": {"accuracy": stat([0.81, 0.83]), "gain": stat([0.03, 0.05], "random_real")},
        "seqmatch": {"gain": None},
        "datm": {"accuracy": stat([0.8, 0.81, 0.82]), "gain": stat([0.01, 0.02, 0.06], "random_real_soft")}}}
    summary = {"study": "s", "budget": "per-image", "seeds": [0, 1, 2], "methods": ["mtt", "seqmatch", "datm"],
               "cells": [cell]}
    figure = fair_gain_figure(summary)
    assert [t.name for t in figure.data] == ["static MTT", "DATM"]
    mtt, datm = figure.data
    assert list(mtt.y) == [pytest.approx(4.0)] and list(mtt.error_y.array) == [pytest.approx(100 * 0.02 / 2 ** 0.5)]
    assert list(datm.y) == [pytest.approx(3.0)] and list(datm.error_y.array) == [pytest.approx(100 * 0.0264575, rel=1e-5)]
    assert [list(t.customdata[0]) for t in figure.data] == [[2, "hard"], [3, "soft"]]
    assert mtt.x[0] < 20 < datm.x[0]  # side by side, in the catalogue's order
    assert figure.layout.yaxis.title.text == "accuracy gain (points)"
    assert "(soft for soft-label methods)" in figure.layout.title.text and "over 2–3 seeds" in figure.layout.title.text
    hard_only = {**summary, "cells": [{**cell, "methods": {"mtt": cell["methods"]["mtt"]}}]}
    assert "soft" not in fair_gain_figure(hard_only).layout.title.text


def embedding(sources: list[str]) -> Embedding:
    """2 epochs x 6 points: 2 real, then 2 + 2 synthetic points per source's subsets."""
    kinds = ["real", "real", "S1", "S2", "S1", "S2"]
    points = len(kinds)
    return Embedding(coords=torch.arange(2 * points * 2, dtype=torch.float32).view(-1, 2),
                     epoch=torch.tensor([0] * points + [5] * points), point=torch.arange(points).repeat(2),
                     label=torch.tensor([0, 1, 0, 1, 1, 0]).repeat(2), epochs=[0, 5], kinds=kinds,
                     sources=sources, class_names=["cat", "dog"], reducer="pca", seed=0)


def test_g3_figure_frames_traces_and_symbols():
    figure = g3_figure(embedding(["real", "real", "seqmatch", "seqmatch", "seqmatch", "seqmatch"]))
    names = [trace.name for trace in figure.data]
    assert names == ["real", "S1", "S2", "cat", "dog"]  # marker categories, then class legend entries
    assert len(figure.frames) == 2 and [f.name for f in figure.frames] == ["0", "5"]
    assert list(figure.frames[1].traces) == [0, 1, 2]
    assert len(figure.frames[1].data[1].x) == 2  # two S1 points at epoch 5
    assert figure.data[0].marker.symbol != figure.data[1].marker.symbol
    assert [s.label for s in figure.layout.sliders[0].steps] == ["0", "5"]
    assert figure.layout.xaxis.title.text == "PC 1" and figure.layout.yaxis.title.text == "PC 2"


def test_g3_figure_marks_the_method_when_runs_are_overlaid():
    figure = g3_figure(embedding(["real", "real", "mtt", "mtt", "seqmatch", "seqmatch"]))
    assert [trace.name for trace in figure.data][:5] == ["real", "mtt S1", "mtt S2", "seqmatch S1", "seqmatch S2"]
    assert len(figure.data) == 7 and len(figure.frames[0].data) == 5


def test_g4_figure_grouped_bars_with_error_bars():
    def accuracies(mean, std):
        return NetAccuracies(mean, std, [])

    synthetic = SetAccuracies(accuracies(0.6, 0.01), accuracies(0.8, 0.01), accuracies(0.4, 0.02))
    real = SetAccuracies(accuracies(0.5, 0.01), accuracies(0.6, 0.03), accuracies(None, None))
    result = G4Result("seqmatch", "run", 2, 1.0, 5, 5, 2, 1, 300, {"synthetic": synthetic, "random_real": real},
                      [1.0] * 10)
    entries = g4_entries(result, "SeqMatch") + g4_entries(replace(result, method="mtt"), baseline=False)
    figure = g4_figure(entries)
    assert [trace.name for trace in figure.data] == ["SeqMatch", "random real", "mtt"]
    assert figure.layout.barmode == "group"
    assert list(figure.data[0].y) == [80.0, 40.0] and list(figure.data[0].error_y.array) == [1.0, 2.0]
    assert list(figure.data[1].y) == [60.0, None]
    assert figure.layout.yaxis.title.text == "test accuracy (%)"
    assert figure.layout.xaxis.title.text == "test images (split by expert hardness)"


def test_live_curves_show_the_first_points_as_dots():
    from seqmatch_engine.interfaces.live import LiveState
    from views.render import curves_figure

    live = LiveState("r", losses=[(0, 1, 0.9)], lrs=[(0, 1, 0.1)], start_epochs=[(0, 1, 2)])
    modes = [trace.mode for trace in curves_figure(live).data]
    assert modes == ["lines+markers", "lines+markers", "markers"]  # a single point still shows
    live.losses = [(0, i, 0.5) for i in range(1, 30)]
    assert curves_figure(live).data[0].mode == "lines"


def test_live_curves_tick_whole_iterations_and_epochs_once_each():
    """A start epoch of 0-2 had ticks every 0.5 drawn as whole numbers: 0, 0, 1, 1, 2."""
    from seqmatch_engine.interfaces.live import LiveState
    from views.render import curves_figure

    live = LiveState("r", losses=[(0, i, 0.5) for i in range(16)], lrs=[(0, i, 0.1) for i in range(16)],
                     start_epochs=[(0, i, i % 3) for i in range(16)])
    layout = curves_figure(live).layout
    assert (layout.yaxis3.dtick, layout.yaxis3.tick0, layout.yaxis3.tickformat) == (1, 0, "d")
    assert layout.xaxis.dtick == 3 and layout.xaxis3.dtick == 3
    live.start_epochs = [(0, i, 40) for i in range(1000)]
    live.losses = [(0, i, 0.5) for i in range(1000)]
    layout = curves_figure(live).layout
    assert layout.yaxis3.dtick == 8 and layout.xaxis.dtick == 200


def test_live_panels_label_classes_at_a_third_of_a_row():
    """28 px images are drawn x4 (113 px rows); the class names must grow with them, or they shrink
    to a few pixels when the app fits the picture into its panel."""
    import numpy as np

    from seqmatch_engine.data.prepare import PixelTransform
    from views.render import subset_panels

    names = ("T-shirt/top", "Trouser", "Pullover")
    transform = PixelTransform(torch.zeros(1), torch.ones(1))
    images = {0: torch.full((3 * 2, 1, 28, 28), 0.5), 1: torch.full((3 * 1, 1, 28, 28), 0.5)}
    panel = subset_panels(images, transform, names, active_stage=1)
    row = (28 + 1) * 4  # a scaled image and its padding
    assert panel.shape[0] > 3 * row
    first_row = panel[panel.shape[0] - 3 * row: panel.shape[0] - 2 * row]
    ink = np.nonzero((first_row.min(axis=2) < 100).any(axis=1))[0]  # dark label text; the images are mid-grey
    assert ink.max() - ink.min() >= row // 4  # "T-shirt/top", capitals to descender: a quarter row or more


def test_the_compare_bars_show_both_baselines_whichever_run_comes_first():
    """A hard-label run listed before a soft-label one must not hide the soft-label baseline (it once did)."""
    from seqmatch_engine.interfaces.queries import EvalResult
    from views.compare_tab import accuracy_figure as compare_bars

    def accuracy(mean):
        return {"convnet": {"mean": mean, "std": 0.01, "values": [mean]}}

    mtt = EvalResult("mtt", 20, [0.01], 300, 1, sets={"synthetic": accuracy(0.82), "random_real": accuracy(0.78)})
    datm = EvalResult("datm", 20, [0.01], 300, 1, sets={
        "synthetic": accuracy(0.85), "random_real": accuracy(0.78), "synthetic_hard": accuracy(0.80),
        "random_real_soft": accuracy(0.83)})
    for results in ([("MTT", mtt), ("DATM", datm)], [("DATM", datm), ("MTT", mtt)]):
        bars = dict(zip(compare_bars(results).data[0].x, compare_bars(results).data[0].y))
        assert bars["random real"] == pytest.approx(78.0) and bars["random real, soft labels"] == pytest.approx(83.0)
        assert bars["DATM, hard labels"] == pytest.approx(80.0) and "MTT, hard labels" not in bars


def test_a_soft_label_gain_over_weak_soft_labels_is_flagged():
    """When the experts' soft labels score below hard labels on random real images, the soft-label baseline flatters
    a soft-label set: the gains text says so and gives the gain over the hard-label baseline as well."""
    from seqmatch_engine.interfaces.queries import EvalResult
    from views.compare_tab import gains_markdown

    def accuracy(mean):
        return {"convnet": {"mean": mean, "std": 0.0, "values": [mean]}}

    def datm(soft_baseline):
        return EvalResult("datm", 2, [0.01], 300, 1, sets={
            "synthetic": accuracy(0.571), "random_real": accuracy(0.61), "synthetic_hard": accuracy(0.58),
            "random_real_soft": accuracy(soft_baseline)})

    weak = gains_markdown([("DATM", datm(0.368))])
    assert "+20.30 points over random real, soft labels" in weak
    assert "score *below* hard labels" in weak and "(36.8 % vs 61.0 %)" in weak and "-3.90 points" in weak
    assert "below" not in gains_markdown([("DATM", datm(0.65))])
