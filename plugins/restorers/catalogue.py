"""Named weight files for the ``spandrel`` restorer (``model = "gfpgan-1.4"``...).

Each entry says where the official file is published, its SHA-256 (files are downloaded only
when it is known: :mod:`guidestack.plugins.weights`), its licence, and the options it runs best
with.  Files live in :func:`~guidestack.plugins.weights.models_dir` under their official names.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..weights import ModelCard

GFPGAN = "https://github.com/TencentARC/GFPGAN/releases/download"
KAIR = "https://github.com/cszn/KAIR/releases/download/v1.0"


@dataclass(frozen=True)
class Preset:
    card: ModelCard
    architecture: str
    what: str
    #: options this file runs with unless the recipe says otherwise
    defaults: dict[str, Any] = field(default_factory=dict)
    #: the pip extra its architecture needs, if spandrel itself does not cover it
    extra: str | None = None


SWINIR_CARD = ModelCard(
    "swinir_restoration512_L1.pth",
    "https://github.com/zsyOAOA/DifFace/releases/download/V1.0/swinir_restoration512_L1.pth",
    "S-Lab License 1.0 (non-commercial use only)",
    "DifFace (restoration estimator)",
)
PGDIFF_CARD = ModelCard(
    "rrdb_iter_100000.pth",
    "https://drive.google.com/file/d/1XlpB873rHCn-T5UfUCXq_fAprhuBKR30/view",
    "S-Lab License 1.0 (non-commercial use only)",
    "PGDiff (smooth-semantics restorer)",
    "pip install gdown && gdown 1XlpB873rHCn-T5UfUCXq_fAprhuBKR30 -O {dest}",
)

PRESETS: dict[str, Preset] = {
    "difface-swinir": Preset(
        SWINIR_CARD,
        "SwinIR",
        "DifFace's 512x512 face estimator (8x8 unshuffle, nearest+conv x8)",
        {"size": 512},
    ),
    "realesrgan-x4plus": Preset(
        ModelCard(
            "RealESRGAN_x4plus.pth",
            "https://github.com/xinntao/Real-ESRGAN/releases/download/v0.1.0/RealESRGAN_x4plus.pth",
            "BSD-3-Clause",
            "Real-ESRGAN (general real-world x4 super-resolution)",
            sha256="4fa0d38905f75ac06eb49a7951b426670021be3018265fd191d2125df9d682f1",
        ),
        "ESRGAN",
        "Real-ESRGAN x4plus (GAN-trained RRDBNet; the offline copy: realesrgan-x4)",
        {"downsample": 2.0},
    ),
    "gfpgan-1.4": Preset(
        ModelCard(
            "GFPGANv1.4.pth",
            f"{GFPGAN}/v1.3.0/GFPGANv1.4.pth",
            "Apache-2.0 (GFPGAN)",
            "GFPGAN (blind face restoration)",
            sha256="e2cd4703ab14f4d01fd1383a8a8b266f9a5833dacee8e6a79d3bf21a1b6be5ad",
        ),
        "GFPGAN",
        "GFPGAN v1.4, 512x512 aligned faces",
    ),
    "gfpgan-1.3": Preset(
        ModelCard(
            "GFPGANv1.3.pth",
            f"{GFPGAN}/v1.3.0/GFPGANv1.3.pth",
            "Apache-2.0 (GFPGAN)",
            "GFPGAN (blind face restoration)",
            sha256="c953a88f2727c85c3d9ae72e2bd4846bbaf59fe6972ad94130e23e7017524a70",
        ),
        "GFPGAN",
        "GFPGAN v1.3, 512x512 aligned faces",
    ),
    "restoreformer": Preset(
        ModelCard(
            "RestoreFormer.pth",
            f"{GFPGAN}/v1.3.4/RestoreFormer.pth",
            "no licence stated by its authors (released with GFPGAN v1.3.4): research use",
            "RestoreFormer (blind face restoration)",
            sha256="07404d446d62ca3d5ed38b1de09a947a1e77d46dbccec961a74d713a8f24ace0",
        ),
        "RestoreFormer",
        "RestoreFormer, 512x512 aligned faces",
    ),
    "codeformer": Preset(
        ModelCard(
            "codeformer.pth",
            "https://github.com/sczhou/CodeFormer/releases/download/v0.1.0/codeformer.pth",
            "S-Lab License 1.0 (non-commercial use only)",
            "CodeFormer (blind face restoration; PGDiff's suggested restorer)",
            sha256="1009e537e0c2a07d4cabce6355f53cb66767cd4b4297ec7a4a64ca4b8a5684b7",
        ),
        "CodeFormer",
        "CodeFormer, 512x512 aligned faces",
        extra="codeformer",
    ),
    "scunet-psnr": Preset(
        ModelCard(
            "scunet_color_real_psnr.pth",
            f"{KAIR}/scunet_color_real_psnr.pth",
            "Apache-2.0",
            "SCUNet (blind real-world denoising)",
            sha256="fa78899ba2caec9d235a900e91d96c689da71c42029230c2028b00f09f809c2e",
        ),
        "SCUNet",
        "SCUNet real-noise denoiser, PSNR-trained (smooth)",
    ),
    "scunet-gan": Preset(
        ModelCard(
            "scunet_color_real_gan.pth",
            f"{KAIR}/scunet_color_real_gan.pth",
            "Apache-2.0",
            "SCUNet (blind real-world denoising)",
            sha256="892c83f812c59173273b74f4f34a14ecaf57a2fdb68df056664589beb55c966e",
        ),
        "SCUNet",
        "SCUNet real-noise denoiser, GAN-trained (sharper)",
    ),
}
