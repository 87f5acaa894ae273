"""The ODEdit/CODE stages' and the projections' options models, in a module that does not import torch: recipes are
validated and stages listed (``guidestack validate``, ``guidestack plugins``) without loading the
method.  The stage modules re-export them."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, model_validator

from guidestack.engine.config import StrictModel
from guidestack.engine.stage import StageOptions

if TYPE_CHECKING:  # pragma: no cover
    import torch


# --- projections -------------------------------------------------------------------------------


class X0Rule(StrictModel):
    """How an x0 prediction is bounded by stages that call the model themselves (ODEdit's
    inversion and Langevin), mirroring what the sampler does with ``clip_x0`` and the
    ``dynamic-thresholding`` stage."""

    mode: Literal["none", "clip", "dynamic"] = Field(
        "none", description="none: raw x0; clip: clamp to [-1, 1]; dynamic: dynamic thresholding"
    )
    quantile: float = Field(
        0.98, gt=0.0, le=1.0, description="dynamic: quantile of |x0| per sample"
    )
    max: float = Field(1.3, ge=1.0, description="dynamic: largest threshold s")

    def apply(self, x0: torch.Tensor) -> torch.Tensor:
        if self.mode == "clip":
            return x0.clamp(-1.0, 1.0)
        if self.mode == "dynamic":
            from .projections import dynamic_threshold  # the tensor arithmetic lives there

            return dynamic_threshold(x0, self.quantile, self.max)
        return x0


class DynamicThresholdingOptions(StageOptions):
    quantile: float = Field(
        0.98, gt=0.0, le=1.0, description="quantile of |x0| per sample (CODE: 0.98)"
    )
    max: float = Field(
        1.3, ge=1.0, description="largest threshold s (CODE: 1.3); 1 = plain clipping"
    )
    window: tuple[int, int] | None = Field(
        None, description="only act when lo < t <= hi (ORIGINAL timesteps); default: always"
    )


class ConfidenceClippingOptions(StageOptions):
    eta: float = Field(1.7, gt=0.0, description="noise standard deviations allowed (CODE: 1.7)")
    apply_to: Literal["x_t", "x_prev"] = Field(
        "x_t",
        description=(
            "x_t: clip the latent before each denoiser call, at abar_t (CODE); x_prev: clip each "
            "step's result at abar_t_prev (the final image to [-1, 1])"
        ),
    )
    window: tuple[int, int] | None = Field(
        None, description="only act when lo < t <= hi (ORIGINAL timesteps of the latent clipped)"
    )


# --- odedit ------------------------------------------------------------------------------------


class ODEInversionOptions(StageOptions):
    depth: int | None = Field(
        None,
        ge=0,
        description="ORIGINAL timestep to invert to (default: the top of the sampler grid)",
    )
    steps: int | None = Field(
        None,
        ge=1,
        description="invert over the grid of a sampler with this many steps (its spacing, from depth down); default: the points the sampler visits",
    )
    noise: float = Field(
        0.0, ge=0.0, description="std of Gaussian noise added to the observation first (CODE: 0.01)"
    )
    noise_draws: int = Field(
        1,
        ge=1,
        le=10,
        description="add `noise` this many times, a new draw each (the CODE notebook: 2, std "
        "0.01 sqrt 2)",
    )
    start: Literal["data", "image"] = Field(
        "data",
        description="data: the observation is the data (alpha_bar 1), the first step inverts it to "
        "the lowest grid point; image: it is taken as the latent at the lowest grid point (the "
        "CODE notebook: t = 0)",
    )
    method: Literal["ddim", "fixed-point"] = Field(
        "ddim",
        description="ddim: plain DDIM inversion (1 call/step); fixed-point: + corrections that invert the decoder's step exactly",
    )
    iterations: int = Field(
        1, ge=1, le=20, description="fixed-point: corrections per step (one model call each)"
    )
    threshold: X0Rule | None = Field(
        None,
        description="x0 rule of the inversion's DDIM steps; match the decoder (default: clip if sampler.clip_x0, else none; CODE: dynamic)",
    )
    clip_eta: float | None = Field(
        None,
        gt=0.0,
        description="confidence-clip each latent during inversion with this eta (CODE's CBC: 1.7)",
    )
    keep_latents: bool = Field(
        True, description="keep every inverted latent in ctx.cache['<id>.latents']"
    )
    reconstruct: bool = Field(
        True,
        description="decode the latent with plain DDIM over the sampler's grid and report the error (costs as many calls)",
    )

    def prior_problems(self, prior: Any) -> list[tuple[str, str]]:
        top = prior.num_train_timesteps - 1
        if self.depth is not None and self.depth > top:
            return [("depth", f"{self.depth} is beyond the prior's last timestep {top}")]
        return []


class LangevinOptions(StageOptions):
    at: list[int] | None = Field(
        None,
        description="ORIGINAL timesteps of the latents to update, each snapped to the nearest visited grid point",
    )
    every: int | None = Field(
        None,
        ge=1,
        description="update every n-th visited latent counted from the data end (0, n, 2n...)",
    )
    updates: int = Field(
        100, ge=0, description="K: Langevin updates per latent (or in total, see per)"
    )
    per: Literal["latent", "total"] = Field(
        "latent", description="latent: K at each chosen latent; total: K split over them"
    )
    step_size: float = Field(
        1e-6, gt=0.0, description="eps of the step-size schedule (seed 1e-6, CODE 1.15e-5)"
    )
    schedule: Literal["seed", "geometric", "constant"] = Field(
        "seed",
        description=(
            "seed: alpha_t = eps * sigma_t / sigma_1 (sigma_1 at the lowest grid point); geometric (CODE): "
            "alpha = eps * ratio^(1 - t/t_top); constant: eps"
        ),
    )
    ratio: float = Field(
        100.0, gt=0.0, description="geometric: alpha at t = 0 over alpha at the grid's top"
    )
    direction: Literal["default", "grow", "shrink"] = Field(
        "default",
        description="whether alpha grows or shrinks with t (default: the schedule's own: seed grows, geometric shrinks)",
    )
    temperature: float = Field(
        1.0 / 3.0, ge=0.0, description="T in sqrt(2 alpha T) z (seed 1/3, CODE 1)"
    )
    sigma: Literal["marginal", "ve"] = Field(
        "marginal",
        description="sigma_t of the score -eps/sigma_t and of the seed schedule: sqrt(1-abar) or sqrt((1-abar)/abar)",
    )
    annealing: int = Field(1, ge=1, description="stages the K updates are split into (CODE: 4)")
    decay: float = Field(
        0.8, gt=0.0, description="alpha multiplier from one annealing stage to the next (CODE: 0.8)"
    )
    noise_free: Literal["none", "stage", "end"] = Field(
        "none",
        description="one extra update without noise after each annealing stage (CODE's code) or once at the end",
    )
    noise_free_eps: Literal["thresholded", "raw"] = Field(
        "thresholded",
        description="the noise-free update's eps: re-derived from threshold(x0) like the others, or the model's raw eps (CODE's code)",
    )
    split: Literal["spread", "floor"] = Field(
        "spread",
        description=(
            "K over the annealing stages: spread (250 -> 63, 63, 62, 62) or floor (K // annealing"
            " each, the rest dropped, and a stage of one update makes none: CODE's code, 62 x 4)"
        ),
    )
    order: Literal["before", "after"] = Field(
        "before",
        description="before: at latent t before the DDIM step from t (seed and CODE); after: on the step's result at t_prev",
    )
    threshold: X0Rule = Field(
        default_factory=X0Rule, description="x0 rule before the score is taken (CODE: dynamic)"
    )
    clip_eta: float | None = Field(
        None,
        gt=0.0,
        description="confidence-clip the latent before every update (CODE option, off)",
    )

    @model_validator(mode="after")
    def _one_selection(self) -> LangevinOptions:
        if self.at is not None and self.every is not None:
            raise ValueError("give `at` or `every`, not both")
        if self.at is not None and any(t < 0 for t in self.at):
            raise ValueError("`at` holds ORIGINAL timesteps, which are >= 0")
        return self
