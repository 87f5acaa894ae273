"""Pretrained networks that guidance stages and metrics share: the face-embedding network
(identity) and the LPIPS backbones (perceptual).

One place loads them, safely (``weights_only``), and says where their weights go and how to get
them offline, so the identity stage and the identity metric (or the perceptual stage and LPIPS)
always read the same file the same way.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import torch

from guidestack.engine.errors import InputError

from .weights import download


def torch_home() -> Path:
    """Where torch (and facenet-pytorch, torchvision) cache downloaded weights."""
    return Path(torch.hub.get_dir()).parent


def fetch_weights(
    url: str, dest: Path, what: str, option_hint: str, sha256: str | None = None
) -> Path:
    """Download ``url`` to ``dest``, checksum-verified (:func:`guidestack.plugins.weights.download`),
    or raise an :class:`InputError` that says how to provide the file by hand: the project's
    machines are offline, users' often are not."""
    return download(url, dest, sha256=sha256, what=what, hint=option_hint)


# --- face embeddings (identity) -----------------------------------------------------------------

#: facenet-pytorch's VGGFace2 weights (the file ``InceptionResnetV1(pretrained="vggface2")`` fetches)
WEIGHTS_URL = "https://github.com/timesler/facenet-pytorch/releases/download/v2.2.9/20180402-114759-vggface2.pt"
#: no checksum of that file is published, so it is not downloaded automatically (docs/models.md)
WEIGHTS_SHA256: str | None = None


def default_weights_path() -> Path:
    """Where facenet-pytorch caches the VGGFace2 weights (``$TORCH_HOME/checkpoints``)."""
    return torch_home() / "checkpoints" / Path(WEIGHTS_URL).name


def download_weights(dest: Path, stage_id: str = "identity", url: str | None = None) -> Path:
    """Fetch the weights to ``dest``; :class:`InputError` saying what to do when offline."""
    url = url or WEIGHTS_URL
    name = Path(url).name
    return fetch_weights(
        url,
        dest,
        f"{stage_id}: the face-embedding weights",
        f'set the stage option weights = "/path/to/{name}" (on the command line: --set '
        f"stage.{stage_id}.weights=/path/to/{name}; any InceptionResnetV1 state dict works)",
        sha256=WEIGHTS_SHA256,
    )


def load_embedder(path: Path, device: torch.device) -> torch.nn.Module:
    """An ``InceptionResnetV1`` in eval mode with the state dict at ``path`` (classifier ignored)."""
    from facenet_pytorch.models.inception_resnet_v1 import InceptionResnetV1

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001
        raise InputError(f"identity: cannot read weights file {path}: {exc}") from exc
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise InputError(f"identity: {path} is not a state dict of InceptionResnetV1")
    state = {k: v for k, v in state.items() if not k.startswith("logits.")}
    net = InceptionResnetV1(pretrained=None, classify=False)
    missing, unexpected = net.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise InputError(
            f"identity: {path} does not fit InceptionResnetV1 (missing {missing[:3]}, "
            f"unexpected {unexpected[:3]}...)"
        )
    for p in net.parameters():
        p.requires_grad_(False)
    return net.eval().to(device)


# --- LPIPS backbones (perceptual) ---------------------------------------------------------------

#: torchvision's ImageNet backbones, as ``lpips`` would download them through torchvision
TORCHVISION_URLS = {
    "alex": "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth",
    "vgg": "https://download.pytorch.org/models/vgg16-397923af.pth",
}
#: the SHA-256 prefixes torchvision puts in those file names (torch.hub checks them)
TORCHVISION_SHA256 = {"alex": "7be5be79", "vgg": "397923af"}
_SLICE_KEY = re.compile(r"^slice\d+\.(\d+)\.(weight|bias)$")


def torchvision_cache_path(net: str) -> Path:
    """Where torchvision caches the backbone (``torch.hub.get_dir()/checkpoints``)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(TORCHVISION_URLS[net]).name


def backbone_state(path: Path, lpips_net: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The state dict for ``lpips_net`` from ``path``: lpips's own ``sliceK.i`` keys, or a full
    torchvision checkpoint (``features.i.*`` keys, classifier ignored)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001
        raise InputError(f"perceptual: cannot read backbone file {path}: {exc}") from exc
    wanted = lpips_net.state_dict().keys()
    if isinstance(state, dict) and set(wanted) <= set(state):
        return {k: state[k] for k in wanted}
    converted = {}
    for key in wanted:
        match = _SLICE_KEY.match(key)
        source = f"features.{match[1]}.{match[2]}" if match else None
        if not isinstance(state, dict) or source not in state:
            raise InputError(
                f"perceptual: {path} is neither an lpips backbone state dict nor a torchvision "
                f"checkpoint of the same network (no '{key}' or '{source}')"
            )
        converted[key] = state[source]
    return converted


def load_lpips(net: str, path: Path, device: torch.device) -> torch.nn.Module:
    """``lpips.LPIPS`` with its shipped linear heads and the backbone at ``path``, frozen."""
    import lpips

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torchvision's "pretrained is deprecated" notices
        model = lpips.LPIPS(net=net, pretrained=True, pnet_rand=True, spatial=True, verbose=False)
    model.net.load_state_dict(backbone_state(path, model.net))
    for p in model.parameters():
        p.requires_grad_(False)
    return model.eval().to(device)
