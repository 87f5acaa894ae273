"""The degradation operators' options models, in a module that does not import torch: recipes
naming an operator (``operator = { use = "downsample", factor = 4 }``) are validated and plugins
listed without loading the operators.  Each operator module re-exports its own."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from guidestack.engine.config import StrictModel
from guidestack.engine.refs import DegradationRef

# --- base --------------------------------------------------------------------------------------


class DegradationOptions(StrictModel):
    """Options of a degradation (subclass per operator)."""

    def capabilities(self, registry: Any) -> frozenset[str] | None:
        """What the operator can do with these options, declared here so a recipe is checked
        without importing the operator: ``"linear"`` (an adjoint), ``"pinv"`` (a closed-form
        pseudo-inverse), ``"coisometry"`` (``H H^T = c I``).  ``None``: undeclared (the check
        builds the operator).  ``tests/test_degradations.py`` builds every operator and
        compares."""
        return None


class LinearOptions(DegradationOptions):
    """Options of a linear operator: its measurement noise."""

    noise: float = Field(
        0.0,
        ge=0.0,
        le=2.0,
        description="standard deviation of the measurement noise n in y = H(x) + n, pixel values "
        "in [-1, 1] (8-bit sigma s is 2 s / 255); what noise-aware solvers assume (DDNM+), "
        "never added to an image",
    )


# --- stochastic --------------------------------------------------------------------------------


class StochasticOptions(DegradationOptions):
    seed: int = Field(0, ge=0, description="seed used when no per-sample generators are given")


# --- linear ------------------------------------------------------------------------------------


class IdentityOptions(LinearOptions):
    def capabilities(self, registry: Any) -> frozenset[str] | None:
        return frozenset({"linear", "pinv", "coisometry"})


class DownsampleOptions(LinearOptions):
    factor: int = Field(
        4, ge=2, le=64, description="downsampling factor k (output side = side / k)"
    )
    mode: Literal["area", "bicubic"] = Field(
        "area",
        description="area: average of k x k blocks (SHRED/BIRD's uniform downsampling, DDNM's "
        "average pooling); bicubic: antialiased bicubic resize (DPS's)",
    )
    observation: Literal["upsampled", "full"] = Field(
        "upsampled",
        description="upsampled: the input is a low-resolution photo (the public API keeps it at "
        "side / k; at the prior's size it is taken as its bicubic upsampling and inverted); "
        "full: the input is a full-resolution picture (downsampled like x0)",
    )

    def capabilities(self, registry: Any) -> frozenset[str] | None:
        area = {"coisometry"} if self.mode == "area" else set()
        return frozenset({"linear", "pinv", *area})


class GrayscaleOptions(LinearOptions):
    weights: Literal["bt601", "mean"] = Field(
        "bt601",
        description="bt601: luma 0.299 R + 0.587 G + 0.114 B; mean: (R + G + B) / 3 (DDNM's and "
        "PGDiff's gray)",
    )

    def capabilities(self, registry: Any) -> frozenset[str] | None:
        return frozenset({"linear", "pinv", "coisometry"})


# --- masks -------------------------------------------------------------------------------------


class MaskOptions(LinearOptions):
    path: str | None = Field(
        None,
        description="a mask file (white = missing), resized to the image as inputs are; default: "
        "the observation's mask (--mask)",
    )
    optional: bool = Field(
        False,
        description="without a mask every pixel is known (H is the identity) instead of an error",
    )

    def capabilities(self, registry: Any) -> frozenset[str] | None:
        return frozenset({"linear", "pinv"})


class BoxMaskOptions(LinearOptions):
    box: tuple[float, float, float, float] = Field(
        (0.25, 0.25, 0.5, 0.5),
        description="missing box as fractions of the image: (top, left, height, width)",
    )

    @model_validator(mode="after")
    def _inside(self) -> BoxMaskOptions:
        top, left, height, width = self.box
        if min(self.box) < 0 or height <= 0 or width <= 0 or top + height > 1 or left + width > 1:
            raise ValueError(f"box {self.box} must lie inside the unit square with positive size")
        return self

    def capabilities(self, registry: Any) -> frozenset[str] | None:
        return frozenset({"linear", "pinv"})


class PixelSubsampleOptions(LinearOptions):
    ratio: float = Field(0.05, gt=0.0, le=1.0, description="fraction of pixels kept (CS 5% = 0.05)")
    seed: int = Field(0, ge=0, description="seed of the fixed sampling pattern")

    def capabilities(self, registry: Any) -> frozenset[str] | None:
        return frozenset({"linear", "pinv"})


# --- blur --------------------------------------------------------------------------------------


class KernelBlurOptions(LinearOptions):
    """Boundary and arithmetic of a fixed-kernel blur."""

    boundary: Literal["reflect", "circular"] = Field(
        "reflect",
        description="reflect: mirrored borders (no closed-form pseudo-inverse); circular: the "
        "image wraps around, H is diagonal in the Fourier basis and has an exact H^+",
    )
    method: Literal["fft", "conv"] = Field(
        "fft",
        description="reflect boundary: convolve through FFTs of the padded image or with conv2d "
        "(the same numbers to float rounding)",
    )
    rcond: float = Field(
        0.03,
        gt=0,
        lt=1,
        description="circular boundary: frequencies where the kernel's spectrum is below rcond "
        "times its peak are cut from H (DDRM/DDNM: 3e-2), so H^+ is bounded by 1 / rcond",
    )

    def capabilities(self, registry: Any) -> frozenset[str] | None:
        return frozenset({"linear", "pinv"} if self.boundary == "circular" else {"linear"})


class GaussianBlurOptions(KernelBlurOptions):
    sigma: float = Field(2.0, gt=0, le=30, description="standard deviation in pixels (x axis)")
    sigma_y: float | None = Field(
        None, gt=0, le=30, description="y-axis sigma (anisotropic); default sigma"
    )
    angle: float = Field(0.0, ge=-180, le=180, description="rotation of the x axis in degrees")
    size: int | None = Field(
        None, ge=1, le=101, description="odd kernel side; default covers 3 sigma"
    )

    @model_validator(mode="after")
    def _odd(self) -> GaussianBlurOptions:
        if self.size is not None and self.size % 2 == 0:
            raise ValueError(f"size must be odd, got {self.size}")
        return self


class MotionBlurOptions(KernelBlurOptions):
    length: float = Field(7.0, ge=1, le=61, description="streak length in pixels")
    angle: float = Field(0.0, ge=-180, le=180, description="direction in degrees (0 = horizontal)")
    size: int | None = Field(
        None, ge=1, le=101, description="odd kernel side; default fits the streak"
    )

    @model_validator(mode="after")
    def _odd(self) -> MotionBlurOptions:
        if self.size is not None and self.size % 2 == 0:
            raise ValueError(f"size must be odd, got {self.size}")
        return self


# --- blind -------------------------------------------------------------------------------------


class BlindBlurOptions(DegradationOptions):
    size: int = Field(15, ge=3, le=101, description="odd kernel side in pixels")
    kernel: Literal["softmax", "network", "gaussian"] = Field(
        "softmax", description="parameterisation of the unknown kernel"
    )
    init_sigma: float = Field(1.0, gt=0, le=30, description="initial width (softmax, gaussian)")
    hidden: int = Field(1000, ge=8, le=4096, description="hidden units of the kernel network")
    seed: int = Field(0, ge=0, description="seed of the kernel network's input and weights")

    @model_validator(mode="after")
    def _odd(self) -> BlindBlurOptions:
        if self.size % 2 == 0:
            raise ValueError(f"size must be odd, got {self.size}")
        return self

    def capabilities(self, registry: Any) -> frozenset[str] | None:
        return frozenset({"linear"})


# --- compose -----------------------------------------------------------------------------------


class ComposeOptions(LinearOptions):
    ops: list[DegradationRef] = Field(
        min_length=1,
        description='operators applied in order, e.g. [{use = "gaussian-blur-kernel", sigma = 2}, '
        '{use = "downsample", factor = 4}]',
    )

    def capabilities(self, registry: Any) -> frozenset[str] | None:
        parts = [op.capabilities(registry) for op in self.ops]
        if any(p is None for p in parts):
            return None
        linear = all("linear" in p for p in parts)
        coisometry = all("coisometry" in p for p in parts)
        inner = all("coisometry" in p for p in parts[:-1])
        pinv = linear and inner and "pinv" in parts[-1]
        found = {"linear"} if linear else set()
        return frozenset(
            found | ({"pinv"} if pinv else set()) | ({"coisometry"} if coisometry else set())
        )


# --- noise -------------------------------------------------------------------------------------


class GaussianNoiseOptions(StochasticOptions):
    sigma: float = Field(
        15.0, ge=0, le=255, description="standard deviation in 8-bit levels (0..255 scale)"
    )


class PoissonNoiseOptions(StochasticOptions):
    peak: float = Field(
        30.0, gt=0, le=1e5, description="photons at full brightness (fewer = noisier)"
    )


# --- photometric -------------------------------------------------------------------------------


class JpegOptions(DegradationOptions):
    quality: int = Field(30, ge=1, le=100, description="JPEG quality (lower = stronger artefacts)")
    codec: Literal["pil", "kornia"] = Field(
        "pil",
        description="codec of simulate(): pil = a real JPEG encode/decode in memory (what users "
        "have); kornia = kornia's differentiable JPEG (what forward() always uses)",
    )


class ContrastOptions(DegradationOptions):
    factor: float = Field(0.5, gt=0, le=1, description="contrast kept (1 = unchanged)")


class PixelateOptions(DegradationOptions):
    block: int = Field(4, ge=1, le=64, description="side of the flat blocks in pixels")


class DesaturateOptions(DegradationOptions):
    amount: float = Field(1.0, ge=0, le=1, description="share of colour removed (1 = grayscale)")


# --- elastic -----------------------------------------------------------------------------------


class ElasticOptions(StochasticOptions):
    displacement: float = Field(
        0.03, ge=0, le=0.5, description="RMS displacement as a fraction of the image side"
    )
    smoothness: float = Field(
        0.1,
        gt=0,
        le=1,
        description="Gaussian smoothing of the field, sigma as a fraction of the side",
    )


# --- damage ------------------------------------------------------------------------------------


class RandomLinesOptions(StochasticOptions):
    fraction: float = Field(0.1, gt=0, le=1, description="share of the columns covered by lines")
    width: float = Field(1 / 64, gt=0, le=0.5, description="line width as a fraction of the width")


class RandomPixelsOptions(StochasticOptions):
    fraction: float = Field(0.1, gt=0, le=1, description="share of the pixels replaced")


class FreeFormMaskOptions(StochasticOptions):
    strokes: int = Field(4, ge=1, le=64, description="number of brush strokes")
    width: float = Field(0.08, gt=0, le=0.5, description="brush width as a fraction of the side")


class ScratchesOptions(StochasticOptions):
    count: int = Field(4, ge=1, le=100, description="number of scratches")
    width: float = Field(
        1 / 96, gt=0, le=0.2, description="scratch width as a fraction of the side"
    )


#: the operators ``random`` draws from by default: every kind of damage the benchmarks cover
DEFAULT_POOL = (
    "gaussian-blur-kernel",
    "motion-blur-kernel",
    "gaussian-noise",
    "poisson-noise",
    "jpeg",
    "downsample",
    "contrast",
    "pixelate",
    "elastic",
    "random-lines",
    "random-pixels",
    "box-mask",
    "free-form-mask",
    "desaturate",
    "scratches",
)


# --- random_pick -------------------------------------------------------------------------------


class RandomOptions(StochasticOptions):
    ops: list[str] = Field(
        default_factory=lambda: list(DEFAULT_POOL),
        min_length=1,
        description="degradations to draw from (each needs a severity table)",
    )
    severity: int | None = Field(
        None, ge=1, le=5, description="fixed severity; default: drawn uniformly from 1..5"
    )
