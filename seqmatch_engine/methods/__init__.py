"""Distillation methods behind one protocol (base.Method), picked from the config by `distill.objective`.

Adding an objective: write its class in a module of this package (subclass MTT where its step is MTT's, as
DATM does), register it in OBJECTIVES below and name it in config.OBJECTIVE_CATALOGUE (the names a config
accepts and how views label them; a test checks that the two agree).
"""
from __future__ import annotations

from seqmatch_engine.core.config import RunConfig
from seqmatch_engine.maths.matching import ConvNetStudent
from seqmatch_engine.methods.base import Method, StageSetting, StepRecord
from seqmatch_engine.methods.datm import DATM
from seqmatch_engine.methods.mtt import MTT, class_labels, initial_images

__all__ = ["DATM", "MTT", "Method", "StageSetting", "StepRecord", "class_labels", "initial_images", "make_method"]


OBJECTIVES: dict[str, type[Method]] = {method.name: method for method in (MTT, DATM)}


def make_method(config: RunConfig, student: ConvNetStudent, setting: StageSetting) -> Method:
    """The method `distill.objective` names, for one stage."""
    return OBJECTIVES[config.distill.objective].from_config(config, student, setting)
