"""eta.py: a run's phases as work units, and the time left priced by measured rates."""
from __future__ import annotations

import pytest
from configs import tiny_run_config

from seqmatch_engine.orchestration.eta import DEFAULT_RATES, PhasePlan, rate, remaining_seconds, run_plan


def test_run_plan_counts_every_phase_of_a_seqmatch_run():
    config = tiny_run_config("eta", 0, (2, 1), select_every=2)  # 2 experts x 3 epochs, 4 iterations per subset
    plan = run_plan(config, train_images=120, classes=10)
    assert [p.name for p in plan] == ["experts 1", "distilling S1", "experts 2", "distilling S2", "evaluating"]
    assert plan[0].units == 2 * 3 * 120
    assert plan[2].units == 2 * (3 * 120 + 2 * 20)  # stage-2 experts: pre-trained on U_1 (20 images) for 2 epochs
    ratio = DEFAULT_RATES["evaluate"] / DEFAULT_RATES["distill"]
    assert plan[1].units == pytest.approx(4 * 20 * 3 + 3 * 1 * 2 * 20 * ratio)  # steps + 3 selections of 1 net
    # S2: its 3 candidates go on from one net trained through U_1 (20 images), each then on U_2 (30 images)
    assert plan[3].units == pytest.approx(4 * 10 * 3 + (3 * 1 * 2 * 30 + 1 * 2 * 20) * ratio)
    assert plan[4].units == 1 * 2 * (20 + 30 + 30)  # U_1 then U_2, then the random-real baseline (IPC 3)
    resumed = run_plan(config, train_images=120, classes=10, start_stage=1)
    assert [p.name for p in resumed] == ["experts 2", "distilling S2", "evaluating"] and resumed[0] == plan[2]


def test_remaining_seconds_prices_the_rest_by_measured_rates():
    plan = [PhasePlan("experts 1", "experts", 100), PhasePlan("distilling S1", "distill", 50),
            PhasePlan("evaluating", "evaluate", 10)]
    measured = {"experts": 0.5, "distill": 2.0}
    # half of distilling left (25 units x 2 s) + evaluation priced from both measured kinds by the default ratios
    slowdown = (0.5 / DEFAULT_RATES["experts"] + 2.0 / DEFAULT_RATES["distill"]) / 2
    expected = 25 * 2.0 + 10 * DEFAULT_RATES["evaluate"] * slowdown
    assert remaining_seconds(plan, "distilling S1", 0.5, measured) == pytest.approx(expected)
    assert remaining_seconds(plan, "experts 1", 0.0, {}) == pytest.approx(sum(p.units * DEFAULT_RATES[p.kind]
                                                                             for p in plan))
    assert remaining_seconds(plan, "done", 1.0, measured) is None
    assert rate("evaluate", {"evaluate": 3.0}) == 3.0
