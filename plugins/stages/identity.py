"""PGDiff's identity property (reference-based restoration): x0 keeps the reference's identity.

Loss (per sample): a distance between face embeddings of x0 and of the reference image, both
resized to the network's input size.  The embedding network is facenet-pytorch's
``InceptionResnetV1`` (VGGFace2 weights; unit-norm 512-d embeddings), standing in for the
paper's ArcFace.  ``distance = "cosine"`` (``1 - cos``, the paper's choice, weight 10) or
``"mse"`` (sum of squared differences, the official code's default, weight 25).

Weights: ``weights = "path"`` (a state dict of ``InceptionResnetV1``, e.g. facenet-pytorch's
``20180402-114759-vggface2.pt``) or, by default, facenet-pytorch's cache.  No checksum of that
file is published, so guidestack does not download it (:mod:`guidestack.plugins.weights`):
without it the stage fails with a message that says where to get it and where to put it.  The
network runs on the whole batch, or on one sample at a time in ``deterministic`` runs so that
batches equal single runs bit for bit.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from guidestack.engine.context import RunContext, StepState
from guidestack.engine.hookspecs import hookimpl
from guidestack.engine.stage import Stage

from ..networks import default_weights_path, download_weights, load_embedder
from .pgdiff_options import IdentityOptions
from .properties import (
    cached_model,
    file_key,
    require_input,
    run_network,
    user_file,
)

DEFAULT_WEIGHT = {"cosine": 10.0, "mse": 25.0}


class Identity(Stage):
    name = "identity"
    description = "PGDiff identity property: face-embedding distance (InceptionResnetV1) between x0 and the reference."
    Options = IdentityOptions
    requires = ("reference",)

    @property
    def weight(self) -> float:
        w = self.options.weight
        return DEFAULT_WEIGHT[self.options.distance] if w is None else float(w)

    def setup(self, ctx: RunContext) -> None:
        reference = require_input(ctx, "reference", self.id, "its identity is kept")
        if self.options.weights is not None:
            path = user_file(self.options.weights, self.id, "weights")
        else:
            path = default_weights_path()
            if not path.is_file():
                download_weights(path, self.id)
        self.net = cached_model(
            ("identity", *file_key(path), str(ctx.device)), lambda: load_embedder(path, ctx.device)
        )
        self.deterministic = ctx.deterministic
        with torch.no_grad():
            self.reference = self.embed(reference.to(ctx.device, torch.float32))

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Unit-norm embeddings ``[N, 512]`` of images in [-1, 1]."""
        s = self.options.size
        resized = F.interpolate(
            x.float(), size=(s, s), mode="bilinear", align_corners=False, antialias=True
        )
        # facenet's fixed_image_standardization: (255 * (x + 1) / 2 - 127.5) / 128
        return run_network(self.net, resized * (127.5 / 128.0), self.deterministic)

    @hookimpl
    def guidance_loss(self, ctx: RunContext, state: StepState) -> torch.Tensor:
        e = self.embed(state.x0)
        ref = self.reference.to(device=e.device, dtype=e.dtype)
        if self.options.distance == "cosine":
            loss = 1.0 - F.cosine_similarity(e, ref, dim=1, eps=1e-6)
        else:
            loss = (e - ref).pow(2).sum(dim=1)
        return loss.to(state.x0.dtype)
