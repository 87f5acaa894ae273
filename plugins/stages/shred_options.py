"""SHRED's options models, in a module that does not import torch: recipes are
validated and stages listed (``guidestack validate``, ``guidestack plugins``) without loading the
method.  The stage modules re-export them."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from guidestack.engine.refs import OperatorRef
from guidestack.engine.stage import StageOptions

# --- shred -------------------------------------------------------------------------------------


class ShredOptions(StageOptions):
    operator: OperatorRef | None = Field(
        None,
        description='forward model H, e.g. { use = "downsample", factor = 4 }; none: optimise only '
        "the other stages' guidance losses",
    )
    iterations: int = Field(100, ge=1, le=100_000, description="Adam iterations (forward passes)")
    lr: float = Field(0.003, gt=0, le=10, description="Adam learning rate of x_T")
    delta: int = Field(
        100, ge=1, le=1000, description="DDIM jump size delta t (ORIGINAL timesteps)"
    )
    grid: Literal["jump", "leading"] = Field(
        "jump",
        description="jump: T-1, T-1-delta, ..., as the paper; leading: diffusers' grid of T/delta "
        "steps (T-delta, ..., 0), as the successor code",
    )
    norm: Literal["mse", "l2", "sse", "l1"] = Field(
        "mse",
        description="data term per sample: mse = mean squared error (successor code), l2 = "
        "Euclidean norm (paper), sse = sum of squares, l1 = mean absolute error",
    )
    gradient: Literal["straight-through", "full"] = Field(
        "straight-through",
        description="straight-through: denoiser without gradient (successor code); full: "
        "backpropagate through the denoiser (paper)",
    )
    checkpoint: bool = Field(True, description="full mode: recompute each jump in backward")
    sphere: bool = Field(True, description="rescale x_T to radius sqrt(C*H*W) after each step")
    project_initial: bool = Field(
        True,
        description="with sphere: rescale the initial x_T too; false: start from the raw normal "
        "draw (BIRD's code)",
    )
    clip_x0: bool = Field(True, description="clip the x0 prediction to [-1, 1] at each jump")
    stop_below: float | None = Field(
        None, gt=0, description="early stop: a sample stops once its loss is below this value"
    )
    operator_lr: float | None = Field(
        None,
        gt=0,
        le=10,
        description="Adam learning rate of a blind H's parameters (default: "
        "the operator's suggestion, 2e-4 for the kernel network)",
    )
    data_weight: float = Field(1.0, ge=0, description="weight of the data term ||y - H(x0)||")
    guidance_t: int = Field(
        0, ge=0, description="timestep handed to the other stages' guidance losses (their windows)"
    )
