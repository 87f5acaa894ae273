"""Photo pipelines: running a recipe on a picture that is not what the prior expects.

A prior sees one aligned square at its own resolution.  A pipeline (``faces``: detect, align,
restore, paste back) cuts a photo into such crops, hands them to the run as ONE batch through
``restore`` and puts the restored crops back.  Plugins register pipelines with
``registry.add_pipeline(cls)``; ``guidestack.run(..., faces=True)`` and ``guidestack run --faces``
use the one named ``faces``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from pydantic import BaseModel

from .config import PipelineOptions as PipelineOptions  # its home is config (no torch)
from .upsampler import Upsampler

#: restores a batch of crops ``[N, C, S, S]`` in [-1, 1] at the prior's size ``S``
RestoreCrops = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class Crop:
    """One crop: what the run saw (``before``) and gave back (``after``), and facts about it."""

    before: torch.Tensor
    after: torch.Tensor
    info: dict[str, Any] = field(default_factory=dict)


@dataclass
class PipelineResult:
    """The whole restored photo, its crops in order, warnings and run.json facts."""

    image: torch.Tensor
    crops: list[Crop]
    warnings: list[str] = field(default_factory=list)
    report: dict[str, Any] = field(default_factory=dict)


class Pipeline:
    """Base class: subclasses set ``name``, ``description``, ``Options`` and implement ``run``."""

    name: ClassVar[str]
    description: ClassVar[str] = ""
    Options: ClassVar[type[BaseModel]] = PipelineOptions

    def __init__(self, options: BaseModel | None = None):
        self.options = options if options is not None else self.Options()

    def hint(self, photo: torch.Tensor) -> str | None:
        """A suggestion for a photo run WITHOUT this pipeline that it would handle better (the
        faces pipeline: "3 faces found, use faces"), or ``None``; cheap, and never raises."""
        return None

    def run(
        self,
        photo: torch.Tensor,
        restore: RestoreCrops,
        size: int,
        upsampler: Upsampler,
        find_upsampler: Callable[[str], Upsampler],
    ) -> PipelineResult:
        """Restore ``photo`` ``[3, H, W]`` in [-1, 1]; ``restore`` is called at most once.

        ``upsampler`` is the run's (it brings restored crops to their size in the photo);
        ``find_upsampler(name)`` resolves any other upsampler the pipeline's options name.
        """
        raise NotImplementedError
