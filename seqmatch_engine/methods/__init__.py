"""Distillation methods behind one protocol (base.Method), picked from the config by `distill.objective`.

Adding an objective: write its class in a module of this package (subclass MTT where its step is MTT's, as
DATM does) and register it in OBJECTIVES below; config.OBJECTIVES lists the names a config accepts.
"""
from __future__ import annotations

from seqmatch_engine.core.config import RunConfig
from seqmatch_engine.maths.matching import ConvNetStudent
from seqmatch_engine.methods.base import Method, StageSetting, StepRecord
from seqmatch_engine.methods.datm import DATM
from seqmatch_engine.methods.mtt import MTT, class_labels, initial_images

__all__ = ["DATM", "MTT", "Method", "StageSetting", "StepRecord", "class_labels", "initial_images", "make_method"]


def _mtt(config: RunConfig, student: ConvNetStudent, setting: StageSetting) -> Method:
    return MTT(student, setting, config.distill.init)


def _datm(config: RunConfig, student: ConvNetStudent, setting: StageSetting) -> Method:
    return DATM(student, setting, config.distill.datm)


OBJECTIVES = {"mtt": _mtt, "datm": _datm}


def make_method(config: RunConfig, student: ConvNetStudent, setting: StageSetting) -> Method:
    """The method `distill.objective` names, for one stage."""
    return OBJECTIVES[config.distill.objective](config, student, setting)
