"""The ``diffusers`` prior: any ``UNet2DModel`` plus its scheduler config, from a folder or the hub.

The schedule is taken from the scheduler class named in the saved config (DDPM, DDIM, ...), so
``alphas_cumprod`` are bit-for-bit the values diffusers itself steps with.  Whatever the model
predicts (epsilon, x0 or v), :meth:`DiffusersPrior.forward` returns epsilon, so step rules and
guidance only ever see one parameterisation.

Loading uses the Hugging Face cache exactly as ``from_pretrained`` does.  The project's machines
have no internet, and huggingface_hub retries an unreachable hub for about 23 s (measured), so a
hub id is first looked up in the cache only, then the hub is probed with one short TCP connect
before any download is attempted; offline, the user gets one paragraph saying how to fetch it.
"""

from __future__ import annotations

import os
import re
import socket
import threading
import warnings
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import torch

from guidestack.engine.errors import PriorUnavailable, UsageError
from guidestack.engine.prior import Prior, PriorOutput

#: seconds the hub reachability probe may take before the hub counts as unreachable
HUB_PROBE_TIMEOUT_S = 3.0
#: the offline prior suggested when a hub model cannot be had
OFFLINE_PRIOR = "gaussian-faces-64"

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
_PREDICTION_TYPES = ("epsilon", "sample", "v_prediction")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?$")


def _as_dtype(dtype: str | torch.dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype) and dtype in _DTYPES.values():
        return dtype
    if isinstance(dtype, str) and dtype in _DTYPES:
        return _DTYPES[dtype]
    raise UsageError(f"dtype must be one of {', '.join(_DTYPES)}, not {dtype!r}")


def alphas_cumprod_from_scheduler_config(config: dict[str, Any]) -> torch.Tensor:
    """``alphas_cumprod`` (float64) of the scheduler described by a diffusers scheduler config.

    Instantiates the class named in ``_class_name`` (``DDPMScheduler`` when absent) so every
    beta schedule diffusers knows (linear, scaled_linear, squaredcos_cap_v2, trained betas,
    zero-SNR rescaling) gives the values diffusers computes (diffusers computes them in float32).
    """
    import diffusers

    class_name = config.get("_class_name", "DDPMScheduler")
    cls = getattr(diffusers, class_name, None)
    if cls is None or not hasattr(cls, "from_config"):
        raise PriorUnavailable(f"unknown diffusers scheduler class {class_name!r} in the config")
    scheduler = cls.from_config(config)
    abar = getattr(scheduler, "alphas_cumprod", None)
    if not isinstance(abar, torch.Tensor):
        raise PriorUnavailable(
            f"scheduler {class_name} has no alphas_cumprod: only DDPM-family (variance-preserving) "
            "schedules can drive a guidestack prior"
        )
    return abar.detach().to(device="cpu", dtype=torch.float64).clone()


class DiffusersPrior(Prior):
    """A diffusers ``UNet2DModel`` as a :class:`Prior` predicting epsilon.

    With ``a = sqrt(abar_t)`` and ``s = sqrt(1 - abar_t)`` (so ``x_t = a x0 + s eps``):

    - ``prediction_type="epsilon"``: ``eps = out``;
    - ``"sample"`` (out is x0): ``eps = (x_t - a * out) / s``;
    - ``"v_prediction"`` (``v = a eps - s x0``): ``eps = a * out + s * x_t``.

    Both conversions are exact identities, not approximations.  A UNet with twice the image
    channels is split into eps and variance values; the second half becomes
    ``PriorOutput.variance_values`` when the scheduler's ``variance_type`` is ``learned_range``
    and is dropped when the scheduler says the variance is fixed (diffusers ignores it then too).

    ``dtype`` is the compute dtype: the UNet's weights are cast to it, inputs are cast in and
    eps / variance values are cast back to ``x_t``'s dtype (float32 in the engine).  The UNet's
    parameters are frozen, but gradients flow to ``x_t`` for guidance.
    """

    kind = "diffusers"

    def __init__(
        self,
        unet: torch.nn.Module,
        scheduler_config: dict[str, Any],
        *,
        name: str = "diffusers",
        dtype: str | torch.dtype = "float32",
        device: str | torch.device | None = None,
        source: str | None = None,
    ):
        super().__init__()
        compute_dtype = _as_dtype(dtype)
        config = unet.config
        size = config.sample_size
        if isinstance(size, list | tuple):
            if len(set(size)) != 1:
                raise PriorUnavailable(f"UNet sample_size {tuple(size)} is not square")
            size = size[0]
        if getattr(unet, "class_embedding", None) is not None:
            raise PriorUnavailable(
                f"{name}: class-conditional UNets need class labels and are not supported"
            )
        self.scheduler_config = dict(scheduler_config)
        self.prediction_type = self.scheduler_config.get("prediction_type", "epsilon")
        if self.prediction_type not in _PREDICTION_TYPES:
            raise PriorUnavailable(
                f"{name}: prediction_type {self.prediction_type!r} is not supported "
                f"(one of {', '.join(_PREDICTION_TYPES)})"
            )
        self.variance_type = self.scheduler_config.get("variance_type", "fixed_small")
        channels, out_channels = int(config.in_channels), int(config.out_channels)
        if out_channels not in (channels, 2 * channels):
            raise PriorUnavailable(
                f"{name}: UNet has {channels} input and {out_channels} output channels; "
                f"expected {channels} (eps) or {2 * channels} (eps and variance)"
            )
        self.split_output = out_channels == 2 * channels
        if self.split_output and self.variance_type == "learned":
            raise PriorUnavailable(
                f"{name}: variance_type 'learned' (log-variance output) is not supported; "
                "only 'learned_range' learned variances are"
            )
        self.learned_variance = self.split_output and self.variance_type == "learned_range"
        self.image_size = int(size)
        self.channels = channels
        self.name = name
        self.source = source if source is not None else name
        if next(unet.parameters()).dtype != compute_dtype:
            unet = unet.to(dtype=compute_dtype)
        self.unet = unet.eval().requires_grad_(False)
        abar = alphas_cumprod_from_scheduler_config(self.scheduler_config)
        self.register_buffer("alphas_cumprod", abar)
        if device is not None:
            self.to(device)

    @property
    def compute_dtype(self) -> torch.dtype:
        return next(self.unet.parameters()).dtype

    def forward(self, x_t: torch.Tensor, t: torch.Tensor | int) -> PriorOutput:
        """Epsilon (and learned-range variance values) at ORIGINAL timesteps ``t``."""
        n = x_t.shape[0]
        t = torch.as_tensor(t, device=x_t.device).long().reshape(-1).expand(n)
        model_dtype = self.compute_dtype
        out = self.unet(x_t.to(model_dtype), t).sample.to(x_t.dtype)
        variance_values = None
        if self.split_output:
            out, rest = out[:, : self.channels], out[:, self.channels :]
            variance_values = rest if self.learned_variance else None
        if self.prediction_type == "epsilon":
            eps = out
        else:
            abar = self.alphas_cumprod.to(x_t.device)[t].view(n, *([1] * (x_t.dim() - 1)))
            a = abar.sqrt().to(x_t.dtype)
            s = (1.0 - abar).sqrt().to(x_t.dtype)
            eps = (x_t - a * out) / s if self.prediction_type == "sample" else a * out + s * x_t
        return PriorOutput(eps=eps, variance_values=variance_values)

    def describe(self) -> dict:
        info = super().describe()
        info.update(
            source=self.source,
            prediction_type=self.prediction_type,
            variance_type=self.variance_type,
            dtype=str(self.compute_dtype).removeprefix("torch."),
        )
        return info


# ---------------------------------------------------------------------------------------- loading


def _looks_like_path(source: str) -> bool:
    """True for things a user means as a folder: ``./x``, ``/x``, ``~/x``, ``a/b/c``, ``C:\\x``."""
    if source.startswith((".", "/", "~")) or "\\" in source or re.match(r"^[A-Za-z]:", source):
        return True
    return not _HUB_ID.match(source)


def _unet_subfolders(subfolder: str | None) -> list[str | None]:
    return [subfolder] if subfolder is not None else [None, "unet"]


def _scheduler_subfolders(unet_subfolder: str | None) -> list[str | None]:
    """Where the scheduler config may sit relative to the UNet (flat repo or pipeline)."""
    if unet_subfolder is None:
        return [None, "scheduler"]
    return ["scheduler", None, unet_subfolder]


def _load_parts(
    source: str,
    subfolder: str | None,
    revision: str | None,
    local_only: bool,
    dtype: torch.dtype = torch.float32,
) -> tuple[torch.nn.Module, dict[str, Any] | None]:
    """Load the UNet and its scheduler config from a folder or hub id (raises ``OSError``)."""
    with warnings.catch_warnings():
        # diffusers passes a deprecated argument to huggingface_hub; not the user's concern
        warnings.filterwarnings("ignore", message=".*local_dir_use_symlinks.*")
        warnings.simplefilter("ignore", FutureWarning)
        return _load_parts_quietly(source, subfolder, revision, local_only, dtype)


def _load_parts_quietly(
    source: str, subfolder: str | None, revision: str | None, local_only: bool, dtype: torch.dtype
) -> tuple[torch.nn.Module, dict[str, Any] | None]:
    from diffusers import DDPMScheduler, UNet2DModel

    common = {"revision": revision, "local_files_only": local_only}
    first_error: OSError | None = None
    unet_sub: str | None = None
    for sub in _unet_subfolders(subfolder):
        try:
            config = UNet2DModel.load_config(source, subfolder=sub, **common)
        except OSError as err:
            first_error = first_error or err
            continue
        if config.get("_class_name", "UNet2DModel") == "UNet2DModel":
            unet_sub = sub
            break
        first_error = first_error or OSError(
            f"{source}: {sub or '.'}/config.json describes a {config.get('_class_name')}, "
            "not a UNet2DModel"
        )
    else:
        assert first_error is not None
        raise first_error
    unet = UNet2DModel.from_pretrained(
        source, subfolder=unet_sub, low_cpu_mem_usage=False, torch_dtype=dtype, **common
    )
    scheduler_config = None
    for sub in _scheduler_subfolders(unet_sub):
        try:
            scheduler_config = dict(DDPMScheduler.load_config(source, subfolder=sub, **common))
            break
        except OSError:
            continue
    return unet, scheduler_config


def _hub_offline_env() -> bool:
    """``HF_HUB_OFFLINE`` as set now (huggingface_hub only reads it once, at import)."""
    from huggingface_hub import constants

    value = os.environ.get("HF_HUB_OFFLINE", "").strip().upper()
    return value in ("1", "ON", "YES", "TRUE") or bool(constants.HF_HUB_OFFLINE)


def _hub_reachable(timeout: float = HUB_PROBE_TIMEOUT_S) -> tuple[bool, str]:
    """One TCP connect to the hub (or the HTTPS proxy), bounded in time even if DNS hangs."""
    from huggingface_hub import constants

    target = urlsplit(constants.ENDPOINT)
    proxy = next(
        (
            os.environ[k]
            for k in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")
            if os.environ.get(k)
        ),
        None,
    )
    if proxy:
        target = urlsplit(proxy if "://" in proxy else f"http://{proxy}")
    host = target.hostname or ""
    port = target.port or (443 if target.scheme == "https" else 80)
    result: dict[str, str] = {}

    def probe() -> None:
        try:
            with socket.create_connection((host, port), timeout=timeout):
                result["ok"] = ""
        except OSError as err:
            result["error"] = f"{type(err).__name__}: {err}"

    thread = threading.Thread(target=probe, name="guidestack-hub-probe", daemon=True)
    thread.start()
    thread.join(timeout + 0.5)
    if "ok" in result:
        return True, ""
    return False, result.get("error", f"no answer from {host}:{port} within {timeout:g} s")


def _not_downloaded(repo_id: str, reason: str) -> PriorUnavailable:
    from huggingface_hub import constants

    return PriorUnavailable(
        f"The diffusers model '{repo_id}' is not in the Hugging Face cache ({constants.HF_HUB_CACHE}) "
        f"and cannot be downloaded now ({reason}). Download it once on a machine with internet "
        f"into that cache, with `hf download {repo_id}` (older huggingface_hub: "
        f"`huggingface-cli download {repo_id}`) or "
        f"`python -c \"from huggingface_hub import snapshot_download; snapshot_download('{repo_id}')\"`; "
        f"afterwards it loads offline from the cache (copy the cache folder, or set HF_HOME, to use "
        f"it on another machine). To run without any download, use the built-in offline prior "
        f"`{OFFLINE_PRIOR}`. (There is no local folder named '{repo_id}' either.)"
    )


def load_diffusers_prior(
    source: str,
    *,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype = "float32",
    local_files_only: bool | None = None,
    subfolder: str | None = None,
    revision: str | None = None,
) -> DiffusersPrior:
    """Load a :class:`DiffusersPrior` from a local folder or a Hugging Face hub id.

    Both layouts work: a flat folder (``config.json`` + weights + ``scheduler_config.json``, as
    in google/ddpm-*) and a pipeline folder (``unet/`` and ``scheduler/``).  ``subfolder`` picks
    the UNet's folder explicitly.  A folder without a scheduler config falls back, with a warning,
    to diffusers' default DDPM schedule (linear betas 1e-4..0.02, 1000 steps).

    For a hub id, ``local_files_only=None`` tries the cache first and the hub only if the model
    is not there (and ``HF_HUB_OFFLINE`` is unset); ``True`` never touches the network; ``False``
    asks the hub directly (to pick up a newer revision).
    """
    compute_dtype = _as_dtype(dtype)  # fail on a bad dtype before any loading
    folder = Path(source).expanduser()
    if folder.is_dir():
        try:
            unet, scheduler_config = _load_parts(
                str(folder), subfolder, revision, True, compute_dtype
            )
        except OSError as err:
            raise PriorUnavailable(
                f"folder {folder} does not hold a diffusers UNet2DModel (config.json and "
                f"weights at its top or in {subfolder or 'unet'}/): {err}"
            ) from err
        name, where = folder.resolve().name, str(folder)
    elif _looks_like_path(source):
        raise PriorUnavailable(
            f"no such folder: {source} ({folder.absolute()}); a diffusers prior is a local folder or a hub id such "
            "as google/ddpm-ema-celebahq-256"
        )
    else:
        unet, scheduler_config = _load_from_hub(
            source, subfolder, revision, local_files_only, compute_dtype
        )
        name, where = source, source
    if scheduler_config is None:
        warnings.warn(
            f"{where} has no scheduler_config.json; assuming diffusers' default DDPM schedule "
            "(linear betas 1e-4..0.02, 1000 steps, epsilon prediction)",
            stacklevel=2,
        )
        scheduler_config = {"_class_name": "DDPMScheduler"}
    return DiffusersPrior(
        unet, scheduler_config, name=name, dtype=dtype, device=device, source=where
    )


def _load_from_hub(
    repo_id: str,
    subfolder: str | None,
    revision: str | None,
    local_files_only: bool | None,
    dtype: torch.dtype,
) -> tuple[torch.nn.Module, dict[str, Any] | None]:
    cache_error: OSError | None = None
    if local_files_only is not False:
        try:
            return _load_parts(repo_id, subfolder, revision, True, dtype)
        except OSError as err:
            cache_error = err
        if local_files_only:
            raise _not_downloaded(repo_id, "local_files_only=True") from cache_error
    if _hub_offline_env():
        raise _not_downloaded(repo_id, "HF_HUB_OFFLINE is set") from cache_error
    reachable, why = _hub_reachable()
    if not reachable:
        raise _not_downloaded(repo_id, f"the hub is unreachable: {why}") from cache_error
    try:
        return _load_parts(repo_id, subfolder, revision, False, dtype)
    except OSError as err:
        raise PriorUnavailable(
            f"cannot load the diffusers model '{repo_id}' from the hub: {err}".replace("\n", " ")
        ) from err


def prior_from_unet(
    unet: torch.nn.Module,
    *,
    scheduler: Any = None,
    alphas_cumprod: torch.Tensor | None = None,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype = "float32",
    name: str | None = None,
) -> DiffusersPrior:
    """A :class:`DiffusersPrior` around a ``UNet2DModel`` instance and its scheduler.

    ``scheduler`` is a diffusers scheduler (its ``config`` gives the schedule, prediction type
    and variance type); ``alphas_cumprod`` alone means an epsilon-predicting, fixed-variance
    model with that schedule.  The UNet stays on its device unless ``device`` is given (the
    prior and therefore the run follow it); it is cast to ``dtype`` in place.
    """
    if scheduler is not None:
        config = dict(getattr(scheduler, "config", {}) or {})
        config.setdefault("_class_name", type(scheduler).__name__)
        abar = None
    elif alphas_cumprod is not None:
        config, abar = {"_class_name": "DDPMScheduler"}, alphas_cumprod
    else:
        raise PriorUnavailable(
            "a UNet2DModel needs its noise schedule: pass scheduler= (e.g. "
            "DDPMScheduler.from_pretrained(...)) or alphas_cumprod="
        )
    if device is None:
        device = next(unet.parameters()).device
    label = name or str(getattr(unet.config, "_name_or_path", "") or "unet")
    prior = DiffusersPrior(unet, config, name=label, dtype=dtype, device=device, source=label)
    if abar is not None:
        abar = torch.as_tensor(abar, dtype=torch.float64).detach().cpu().reshape(-1)
        if abar.shape != prior.alphas_cumprod.shape:
            prior.alphas_cumprod = abar
        else:
            prior.alphas_cumprod.copy_(abar)
    return prior
