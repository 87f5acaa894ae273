"""PGDiff's partial-guidance properties (Yang et al.): each property is one guidance stage."""

from __future__ import annotations

from guidestack.engine.registry import Registry

from .smooth_semantics import SmoothSemantics

STAGES = (SmoothSemantics,)


def contribute(registry: Registry) -> None:
    for stage in STAGES:
        registry.add_stage(stage)
