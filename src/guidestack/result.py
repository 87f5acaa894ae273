"""What :func:`guidestack.run` returns for one input: the image, its report, its x0 trajectory.

A :class:`Result` can write itself (``save``) exactly as ``guidestack run`` writes an input's
outputs, so the CLI, the web UI and a notebook produce the same files.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from guidestack.engine.pipeline import Crop


@dataclass
class Trajectory:
    """The x0 predictions recorded during a run: ``x0[k]`` ``[C, H, W]`` at ORIGINAL ``t[k]``."""

    t: list[int]
    x0: torch.Tensor

    def __len__(self) -> int:
        return len(self.t)

    def picture(self) -> Image.Image:
        """The frames side by side, labelled with their timestep (the ``_trajectory.png``)."""
        from guidestack.io.pictures import trajectory_strip

        return trajectory_strip(list(zip(self.t, self.x0, strict=True)))


@dataclass
class Result:
    """One restored input.

    ``image`` is ``[C, H, W]`` float32 in [-1, 1] on the CPU, at the output size (by default the
    input's own; the whole photo for a ``faces`` run); ``restored`` is the prior's own output at
    its resolution, before the output was composed (:mod:`guidestack.finish`).  ``report`` is
    the run.json of this input: run-level facts (recipe as it ran, prior, device) and
    ``report["inputs"][0]``, the input's own entry (seed, model calls, seconds, placement, output
    facts, per-stage facts, warnings).  ``input`` and ``mask`` are the input and its mask at the
    output size, ``reference`` what the prior saw; ``crops`` the faces of a ``faces`` run;
    ``trajectory`` the recorded x0 predictions at the prior's size (empty unless asked for).
    """

    name: str
    image: torch.Tensor
    report: dict[str, Any]
    input: torch.Tensor
    mask: torch.Tensor | None = None
    reference: torch.Tensor | None = None
    trajectory: Trajectory = field(default_factory=lambda: Trajectory([], torch.empty(0, 3, 0, 0)))
    crops: list[Crop] = field(default_factory=list)
    restored: torch.Tensor | None = None

    @property
    def entry(self) -> dict[str, Any]:
        """This input's own entry of the report."""
        return self.report["inputs"][0]

    @property
    def seed(self) -> int:
        return int(self.entry["seed"])

    @property
    def warnings(self) -> list[str]:
        return list(self.entry.get("warnings", []))

    def compare(self) -> Image.Image:
        """input | mask | reference | output, labelled (the ``_compare.png``)."""
        from guidestack.io.pictures import compare_grid

        panels = [("input", self.input)]
        if self.mask is not None:
            panels.append(("mask", self.mask))
        if self.reference is not None:
            panels.append(("reference", self.reference))
        panels.append(("output", self.image))
        return compare_grid(panels)

    def planned_outputs(self, name: str | None = None) -> list[str]:
        """The file names :meth:`save` writes, relative to its folder."""
        stem = name or self.name
        names = [f"{stem}.png", f"{stem}_compare.png"]
        if len(self.trajectory):
            names.append(f"{stem}_trajectory.png")
        for i in range(len(self.crops)):
            names += [
                f"faces/{stem}_face{i:02d}_aligned.png",
                f"faces/{stem}_face{i:02d}_restored.png",
            ]
        return names

    def save(
        self, folder: str | Path, name: str | None = None, *, overwrite: bool = False
    ) -> list[str]:
        """Write the output, the comparison, the trajectory strip and face crops (if any) into
        ``folder``, atomically; refuses to replace existing files unless ``overwrite``.  Returns
        the names written (relative to ``folder``)."""
        from guidestack.io.outputs import prepare_output_dir, save_image, save_pil

        stem = name or self.name
        names = self.planned_outputs(stem)
        folder = prepare_output_dir(folder, names, overwrite)
        save_image(self.image, folder / names[0])
        save_pil(self.compare(), folder / names[1])
        if len(self.trajectory):
            save_pil(self.trajectory.picture(), folder / names[2])
        for i, crop in enumerate(self.crops):
            save_image(crop.before, folder / f"faces/{stem}_face{i:02d}_aligned.png")
            save_image(crop.after, folder / f"faces/{stem}_face{i:02d}_restored.png")
        return names
