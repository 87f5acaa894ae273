"""Blind blur: a kernel estimated jointly with the image (SHRED's blind deconvolution).

Three parameterisations of the unknown kernel, one parameter set per sample (leading batch
dimension) so that a batch equals single runs:

* ``softmax``: free logits over the ``size x size`` kernel, normalised by a softmax (positive,
  sums to one); initialised to a Gaussian of ``init_sigma``;
* ``network``: the successor code's kernel network (SelfDeblur's ``fcn``): a fixed random input
  of 200 values through Linear -> ReLU6 -> Linear -> softmax; its over-parameterisation acts as
  a smoothness prior on the kernel.  Initialised from ``seed`` (the same for every sample);
* ``gaussian``: one learned width ``sigma`` (an isotropic Gaussian), the most constrained.

Each has a sensible Adam learning rate of its own (:attr:`BlindBlur.suggested_lr`): 2e-4 is the
successor's value for the network; free logits and a log-width need larger steps.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from guidestack.engine.context import Observation

from .base import Degradation
from .blur import blur, gaussian_kernel, kernel_width
from .options import BlindBlurOptions

NETWORK_INPUT = 200


SUGGESTED_LR = {"softmax": 0.05, "network": 2e-4, "gaussian": 0.02}


class BlindBlur(Degradation):
    name = "blind-blur"
    description = "Blur with an unknown kernel estimated jointly (blind deconvolution)."
    Options = BlindBlurOptions
    #: linear in x for the current kernels (adjoint by autograd); no pseudo-inverse
    linear = True

    def __init__(self, options=None, registry: Any = None):
        super().__init__(options, registry)
        self.batch = 0

    @property
    def suggested_lr(self) -> float:
        """Adam learning rate that suits this parameterisation (SHRED's ``operator_lr`` default)."""
        return SUGGESTED_LR[self.options.kernel]

    def prepare(self, observation: Observation) -> None:
        """Create one fresh parameter set per sample (same initial values for every sample)."""
        o = self.options
        n = observation.batch_size
        device = observation.image.device
        self.batch = n
        for name in list(self._parameters):
            del self._parameters[name]
        if o.kernel == "softmax":
            init = gaussian_kernel(o.size, o.init_sigma).clamp_min(1e-12).log().reshape(-1)
            self.logits = nn.Parameter(init.repeat(n, 1).to(device))
        elif o.kernel == "gaussian":
            self.log_sigma = nn.Parameter(torch.full((n, 1), math.log(o.init_sigma), device=device))
        else:
            g = torch.Generator().manual_seed(o.seed)
            self.register_buffer(
                "net_input", (0.1 * torch.rand(NETWORK_INPUT, generator=g)).to(device)
            )
            shapes = {
                "w1": (NETWORK_INPUT, o.hidden),
                "b1": (o.hidden,),
                "w2": (o.hidden, o.size * o.size),
                "b2": (o.size * o.size,),
            }
            for name, shape in shapes.items():
                fan_in = (
                    shape[0]
                    if name.startswith("w")
                    else (NETWORK_INPUT if name == "b1" else o.hidden)
                )
                bound = 1.0 / math.sqrt(fan_in)  # nn.Linear's default initialisation range
                value = (torch.rand(shape, generator=g) * 2 - 1) * bound
                setattr(self, name, nn.Parameter(value.expand(n, *shape).clone().to(device)))

    def kernels(self) -> torch.Tensor:
        """The current kernels ``[N, size, size]`` (positive, each summing to one)."""
        o = self.options
        if self.batch == 0:
            raise RuntimeError("degradation 'blind-blur' used before prepare()")
        if o.kernel == "softmax":
            flat = torch.softmax(self.logits, dim=1)
        elif o.kernel == "gaussian":
            return torch.stack(
                [gaussian_kernel(o.size, s, device=s.device) for s in self.log_sigma[:, 0].exp()]
            )
        else:
            rows = []
            for i in range(self.batch):  # per sample: batch-independent arithmetic
                hidden = torch.clamp(self.net_input @ self.w1[i] + self.b1[i], 0.0, 6.0)
                rows.append(torch.softmax(hidden @ self.w2[i] + self.b2[i], dim=0))
            flat = torch.stack(rows)
        return flat.view(-1, o.size, o.size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return blur(x, self.kernels())

    def describe(self) -> dict[str, Any]:
        info = super().describe()
        if self.batch:
            with torch.no_grad():
                info["kernel_sigma"] = [round(float(s), 4) for s in kernel_width(self.kernels())]
        return info
