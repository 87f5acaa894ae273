"""The embedded offline prior: a probabilistic-PCA Gaussian whose denoiser is exact and closed-form.

No pretrained face diffusion model can be downloaded on the project's machines, so this prior lets
the engine run offline, on a CPU, in milliseconds, and gives tests an exact oracle.  The data model
is ``x ~ N(m, C)`` with ``C = U diag(lam) U^T + s2 I`` (``U``: ``d x k`` orthonormal).  At time
``t`` (``a = sqrt(abar_t)``, ``b = sqrt(1 - abar_t)``) the noisy marginal is
``x_t ~ N(a m, U diag(a^2 lam) U^T + c I)`` with ``c = a^2 s2 + b^2``, so by Woodbury the minimum-MSE
noise prediction ``E[eps | x_t] = b (a^2 C + b^2 I)^{-1} (x_t - a m)`` is::

    eps* = (b / c) * (r - U diag(a^2 lam / (a^2 lam + c)) U^T r),   r = x_t - a m

at ``O(d k)`` per sample.  The denoiser runs on the whole batch in two matmuls.  Batched CPU
matmuls (MKL) pick different kernels, and even the alignment of a row inside a batch changes the
summation order, so plain ``x @ U`` is NOT bit-identical between a batch of one and a batch of N
(measured: docs/prior.md); ``batch_invariant = True`` computes each sample on its own freshly
allocated row instead, which is, by construction (the engine's ``deterministic`` mode gets the same
guarantee by calling the prior one sample at a time).
"""

from __future__ import annotations

import importlib.resources
import io
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from guidestack.engine.errors import PriorUnavailable
from guidestack.engine.prior import Prior, PriorOutput, linear_alphas_cumprod

#: ``format`` field of a saved prior file; ``version`` is bumped on incompatible changes
FILE_FORMAT = "guidestack.gaussian-prior"
FILE_VERSION = 1
#: the noise schedule every saved prior is used with (DDPM linear betas, 1000 steps)
SCHEDULE = {"kind": "linear", "num_train_timesteps": 1000, "beta_start": 1e-4, "beta_end": 0.02}
#: priors shipped inside the package (``plugins/priors/data/<name>.pt``)
SHIPPED = ("gaussian-faces-64",)


class GaussianPrior(Prior):
    """A probabilistic-PCA Gaussian prior with the exact MMSE denoiser (see the module docstring).

    ``mean`` is ``[C, S, S]``; ``components`` (``U``) is ``[d, k]`` with orthonormal columns,
    ``lam`` the ``k`` variances above the floor ``s2`` (``>= 0``), ``s2 > 0`` the isotropic variance.
    ``dtype`` is the compute dtype of the buffers (float32 normally, float64 for exact tests);
    ``alphas_cumprod`` always stays float64.  Outputs are cast back to the input's dtype.
    """

    kind = "gaussian"
    learned_variance = False

    mean: torch.Tensor
    components: torch.Tensor
    lam: torch.Tensor
    s2: torch.Tensor

    def __init__(
        self,
        mean: torch.Tensor,
        components: torch.Tensor,
        lam: torch.Tensor,
        s2: float | torch.Tensor,
        *,
        name: str = "gaussian",
        alphas_cumprod: torch.Tensor | None = None,
        metadata: dict[str, Any] | None = None,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ):
        super().__init__()
        if mean.dim() != 3 or mean.shape[1] != mean.shape[2]:
            raise ValueError(f"mean must be [C, S, S], got {tuple(mean.shape)}")
        d = mean.numel()
        if components.dim() != 2 or components.shape[0] != d:
            raise ValueError(f"components must be [{d}, k], got {tuple(components.shape)}")
        k = components.shape[1]
        if lam.shape != (k,):
            raise ValueError(f"lam must have shape [{k}], got {tuple(lam.shape)}")
        if k >= d:
            raise ValueError(f"need fewer components than dimensions ({k} >= {d})")
        s2_value = float(s2)
        if not s2_value > 0 or not math.isfinite(s2_value):
            raise ValueError(f"s2 must be a positive finite variance, got {s2_value}")
        if bool((lam < 0).any()) or not bool(torch.isfinite(lam).all()):
            raise ValueError("lam must be finite and non-negative")
        dtype = dtype or mean.dtype
        self.channels = int(mean.shape[0])
        self.image_size = int(mean.shape[1])
        self.name = name
        self.metadata = dict(metadata or {})
        self.register_buffer("mean", mean.detach().to(dtype).reshape(-1).clone())
        self.register_buffer("components", components.detach().to(dtype).contiguous().clone())
        self.register_buffer("lam", lam.detach().to(dtype).clone())
        self.register_buffer("s2", torch.tensor(s2_value, dtype=dtype))
        abar = linear_alphas_cumprod() if alphas_cumprod is None else alphas_cumprod
        self.register_buffer("alphas_cumprod", abar.detach().to(torch.float64).clone())
        if device is not None:
            self.to(device)

    # ------------------------------------------------------------------------- module plumbing

    @property
    def compute_dtype(self) -> torch.dtype:
        return self.mean.dtype

    @property
    def dim(self) -> int:
        """``d = C * S * S``, the flattened image size."""
        return int(self.mean.shape[0])

    @property
    def num_components(self) -> int:
        return int(self.components.shape[1])

    def describe(self) -> dict:
        info = super().describe()
        info.update(
            components=self.num_components,
            s2=float(self.s2),
            source=self.metadata.get("source", ""),
            num_images=self.metadata.get("num_images"),
        )
        return info

    # ------------------------------------------------------------------------------- helpers

    def _coefficients(self, t: torch.Tensor | int | None, n: int) -> list[tuple[float, float]]:
        """``(a, b)`` per sample; ``t=None`` means clean data (a = 1, b = 0)."""
        if t is None:
            return [(1.0, 0.0)] * n
        values = self.timestep_list(t, n)
        abar = self.alphas_cumprod.detach().cpu()
        return [(math.sqrt(float(abar[v])), math.sqrt(1.0 - float(abar[v]))) for v in values]

    def _rows(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Each sample as a fresh, contiguous, compute-dtype vector (same alignment as alone)."""
        if x.dim() != 4 or x[0].numel() != self.dim:
            raise ValueError(
                f"expected images [N, {self.channels}, {self.image_size}, {self.image_size}], "
                f"got {tuple(x.shape)}"
            )
        flat = x.reshape(x.shape[0], -1)
        return [flat[i].to(self.compute_dtype).clone() for i in range(flat.shape[0])]

    def _images(self, rows: list[torch.Tensor], dtype: torch.dtype) -> torch.Tensor:
        out = torch.stack(rows).to(dtype)
        return out.view(len(rows), self.channels, self.image_size, self.image_size)

    def _scaled_components(self) -> torch.Tensor:
        """``V = U diag(sqrt(lam))`` so that ``C = V V^T + s2 I``."""
        return self.components * self.lam.sqrt()

    # ----------------------------------------------------------------------------- denoiser

    #: ``True`` computes each sample on its own (bit-identical whatever the batch size); the
    #: default ``False`` uses one batched matmul, faster, equal across batch sizes up to float
    #: rounding (the engine's ``deterministic`` mode then calls the prior sample by sample)
    batch_invariant: bool = False

    def forward(self, x_t: torch.Tensor, t: torch.Tensor | int) -> PriorOutput:
        """The exact ``E[eps | x_t]`` at ORIGINAL timesteps ``t`` (``[N]``, may differ per sample)."""
        coeffs = self._coefficients(t, x_t.shape[0])
        if not self.batch_invariant:
            return PriorOutput(eps=self._batched_eps(x_t, coeffs))
        lam64 = self.lam.double()
        s2 = float(self.s2)
        u = self.components
        out = []
        for row, (a, b) in zip(self._rows(x_t), coeffs, strict=True):
            c = a * a * s2 + b * b
            g = a * a * lam64
            shrink = (g / (g + c)).to(u.dtype)
            r = row - a * self.mean
            out.append((b / c) * (r - u @ ((r @ u) * shrink)))
        return PriorOutput(eps=self._images(out, x_t.dtype))

    def _batched_eps(self, x_t: torch.Tensor, coeffs: list[tuple[float, float]]) -> torch.Tensor:
        """The same formula as :meth:`forward` for the whole batch in two matmuls."""
        dtype, device = self.compute_dtype, x_t.device
        # per-sample coefficients in float64 on the CPU (MPS has no float64), cast once
        a, b = (torch.tensor(v, dtype=torch.float64)[:, None] for v in zip(*coeffs, strict=True))
        c = a * a * float(self.s2) + b * b
        g = a * a * self.lam.detach().to("cpu", torch.float64)[None]
        shrink = (g / (g + c)).to(device=device, dtype=dtype)
        r = x_t.reshape(x_t.shape[0], -1).to(dtype) - a.to(device=device, dtype=dtype) * self.mean
        u = self.components
        eps = (b / c).to(device=device, dtype=dtype) * (r - ((r @ u) * shrink) @ u.T)
        return eps.view_as(x_t).to(x_t.dtype)

    # -------------------------------------------------------------------- exact densities

    def sample(
        self,
        n: int,
        generator: torch.Generator | Sequence[torch.Generator] | None = None,
        t: int | None = None,
    ) -> torch.Tensor:
        """``n`` exact samples of the data (``t=None``) or of the noisy marginal ``x_t``.

        ``generator`` may be one generator (samples drawn in turn) or one per sample, the
        project's convention, so that sample ``i`` does not depend on the batch size.
        Per sample it draws ``k`` then ``d`` (then ``d`` more for ``t``) standard normals.
        """
        if generator is None or isinstance(generator, torch.Generator):
            gens: list[torch.Generator | None] = [generator] * n
        else:
            gens = list(generator)
            if len(gens) != n:
                raise ValueError(f"got {len(gens)} generators for {n} samples")
        ((a, b),) = self._coefficients(t, 1)
        v = self._scaled_components()
        noise_std = math.sqrt(float(self.s2))
        dtype, device = self.compute_dtype, self.mean.device

        def draw(size: int, g: torch.Generator | None) -> torch.Tensor:
            where = g.device if g is not None else device
            return torch.randn(size, generator=g, device=where, dtype=dtype).to(device)

        rows = []
        for g in gens:
            z_k, z_d = draw(self.num_components, g), draw(self.dim, g)
            x = self.mean + v @ z_k + noise_std * z_d
            if t is not None:
                x = a * x + b * draw(self.dim, g)
            rows.append(x)
        return self._images(rows, dtype)

    def log_prob(self, x: torch.Tensor, t: torch.Tensor | int | None = None) -> torch.Tensor:
        """Exact log density ``[N]`` of ``x`` under the data (``t=None``) or the marginal of x_t.

        ``x_t ~ N(a m, U diag(g) U^T + c I)`` with ``g = a^2 lam``, ``c = a^2 s2 + b^2``: the
        matrix determinant lemma gives ``log det = (d - k) log c + sum log(g + c)`` and Woodbury
        the Mahalanobis term, both in ``O(d k)``.
        """
        coeffs = self._coefficients(t, x.shape[0])
        d, k = self.dim, self.num_components
        u = self.components
        lam64 = self.lam.double()
        s2 = float(self.s2)
        out = []
        for row, (a, b) in zip(self._rows(x), coeffs, strict=True):
            c = a * a * s2 + b * b
            g = a * a * lam64
            r = row - a * self.mean
            p = r @ u
            shrink = (g / (g + c)).to(u.dtype)
            maha = (torch.dot(r, r) - torch.dot(p * shrink, p)) / c
            logdet = (d - k) * math.log(c) + torch.log(g + c).sum().to(u.dtype)
            out.append(-0.5 * (d * math.log(2.0 * math.pi) + logdet + maha))
        return torch.stack(out)

    # ------------------------------------------------------------------ linear measurements

    def posterior_mean(
        self, y: torch.Tensor, mask: torch.Tensor | None = None, sigma_y: float = 0.0
    ) -> torch.Tensor:
        """``E[x | known pixels of y]`` for inpainting: ``y_o = x_o + n``, ``n ~ N(0, sigma_y^2)``.

        ``mask`` follows :class:`~guidestack.engine.context.Observation`: ``[N, 1 or C, S, S]``,
        1 (>= 0.5) where a pixel is MISSING; ``None`` means all known.  Values of ``y`` at missing
        pixels are ignored.  With ``V = U diag(sqrt(lam))``, ``tau = s2 + sigma_y^2`` and
        ``V_o`` the known rows, Woodbury reduces the solve to ``k x k``::

            v = (r_o - V_o (tau I + V_o^T V_o)^{-1} V_o^T r_o) / tau,   E[x|y] = m + V V_o^T v + s2 v
        """
        tau = float(self.s2) + float(sigma_y) ** 2
        n = y.shape[0]
        if mask is None:
            missing = torch.zeros(n, 1, self.image_size, self.image_size, device=y.device)
        else:
            missing = mask
        if (
            missing.dim() != 4
            or missing.shape[0] != n
            or missing.shape[1] not in (1, self.channels)
        ):
            raise ValueError(
                f"mask must be [N, 1 or {self.channels}, S, S] for a batch of {n}, got "
                f"{tuple(missing.shape)}"
            )
        known = (missing < 0.5).expand(n, self.channels, self.image_size, self.image_size)
        v_full = self._scaled_components()
        eye = torch.eye(self.num_components, dtype=v_full.dtype, device=v_full.device)
        out = []
        for row, known_row in zip(self._rows(y), self._rows(known), strict=True):
            r = known_row * (row - self.mean)
            v_known = known_row[:, None] * v_full
            gram = v_known.T @ v_known
            sol = torch.linalg.solve(tau * eye + gram, r @ v_full)
            v = (r - v_known @ sol) / tau
            out.append(self.mean + v_full @ (v @ v_full) + float(self.s2) * v)
        return self._images(out, y.dtype)

    def posterior_mean_linear(
        self, y: torch.Tensor, operator: torch.Tensor, noise_var: float = 0.0
    ) -> torch.Tensor:
        """``E[x | y]`` for ``y = A x + n``, ``n ~ N(0, noise_var I)``; ``A`` is ``[M, d]`` dense.

        ``m + C A^T (A C A^T + noise_var I)^{-1} (y - A m)`` with ``C A^T`` formed as
        ``V (A V)^T + s2 A^T``: memory ``O(M d)``, so meant for small ``d`` or few measurements.
        ``y`` is ``[N, M]``; returns images ``[N, C, S, S]``.
        """
        dtype = self.compute_dtype
        a_mat = operator.to(device=self.mean.device, dtype=dtype)
        if a_mat.dim() != 2 or a_mat.shape[1] != self.dim:
            raise ValueError(f"operator must be [M, {self.dim}], got {tuple(operator.shape)}")
        y2 = y.reshape(y.shape[0], -1)
        if y2.shape[1] != a_mat.shape[0]:
            raise ValueError(
                f"y has {y2.shape[1]} values per sample, operator gives {a_mat.shape[0]}"
            )
        v = self._scaled_components()
        av = a_mat @ v
        cov_y = av @ av.T + float(self.s2) * (a_mat @ a_mat.T)
        cov_y = cov_y + float(noise_var) * torch.eye(
            a_mat.shape[0], dtype=dtype, device=cov_y.device
        )
        predicted = a_mat @ self.mean
        out = []
        for i in range(y2.shape[0]):
            resid = y2[i].to(device=self.mean.device, dtype=dtype).clone() - predicted
            w = torch.linalg.solve(cov_y, resid)
            out.append(self.mean + v @ (av.T @ w) + float(self.s2) * (a_mat.T @ w))
        return self._images(out, y.dtype)

    # ------------------------------------------------------------------------------- files

    def save(self, path: str | Path, dtype: torch.dtype = torch.float32) -> None:
        """Write the prior as a torch file: tensors in ``dtype`` plus JSON-able metadata.

        Loaded with ``weights_only=True``, so a prior file cannot run code.
        """
        meta = dict(self.metadata)
        meta.update(
            format=FILE_FORMAT,
            version=FILE_VERSION,
            name=self.name,
            image_size=self.image_size,
            channels=self.channels,
            components=self.num_components,
            schedule=dict(SCHEDULE),
        )
        payload = {
            "metadata": meta,
            "mean": self.mean.detach().cpu().to(dtype).view(self.channels, self.image_size, -1),
            "components": self.components.detach().cpu().to(dtype).contiguous(),
            "lam": self.lam.detach().cpu().to(dtype),
            "s2": float(self.s2),
        }
        buffer = io.BytesIO()  # a file-like target names the archive "archive", not after the
        torch.save(payload, buffer)  # file, so equal priors give byte-identical files
        Path(path).write_bytes(buffer.getvalue())

    @classmethod
    def load(
        cls,
        path: str | Path,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> GaussianPrior:
        """Read a file written by :meth:`save`; raises :class:`PriorUnavailable` if it is not one."""
        path = Path(path)
        if not path.is_file():
            raise PriorUnavailable(f"Gaussian prior file not found: {path}")
        try:
            payload = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise PriorUnavailable(f"{path} is not a readable torch file: {exc}") from exc
        meta = payload.get("metadata") if isinstance(payload, dict) else None
        if not isinstance(meta, dict) or meta.get("format") != FILE_FORMAT:
            raise PriorUnavailable(f"{path} is not a guidestack Gaussian prior file")
        if meta.get("version") != FILE_VERSION:
            raise PriorUnavailable(
                f"{path} is a Gaussian prior file of version {meta.get('version')}; this "
                f"guidestack reads version {FILE_VERSION}. Refit it with `guidestack prior fit`."
            )
        schedule = meta.get("schedule", SCHEDULE)
        if schedule.get("kind") != "linear":
            raise PriorUnavailable(f"{path}: unknown noise schedule {schedule!r}")
        abar = linear_alphas_cumprod(
            int(schedule["num_train_timesteps"]),
            float(schedule["beta_start"]),
            float(schedule["beta_end"]),
        )
        return cls(
            payload["mean"],
            payload["components"],
            payload["lam"],
            payload["s2"],
            name=str(meta.get("name", path.stem)),
            alphas_cumprod=abar,
            metadata=meta,
            dtype=dtype,
            device=device,
        )


def shipped_prior_path(name: str = "gaussian-faces-64") -> Path:
    """Path of a prior file shipped inside the package (works for editable installs and wheels)."""
    if name not in SHIPPED:
        raise PriorUnavailable(
            f"no shipped Gaussian prior named '{name}'; shipped: {', '.join(SHIPPED)}"
        )
    resource = importlib.resources.files("guidestack.plugins.priors") / "data" / f"{name}.pt"
    path = Path(str(resource))
    if not path.is_file():
        raise PriorUnavailable(
            f"the shipped prior '{name}' is missing from the installation ({path}); reinstall "
            "guidestack or refit it (docs/prior.md)"
        )
    return path


def load_shipped_prior(
    name: str = "gaussian-faces-64",
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> GaussianPrior:
    """The shipped prior ``name``, ready to run."""
    return GaussianPrior.load(shipped_prior_path(name), device=device, dtype=dtype)
