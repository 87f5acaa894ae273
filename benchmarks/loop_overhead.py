"""How much does guidestack's loop cost on top of the denoiser?

Plain DDIM (eta 0), the same denoiser and the same seed, run by (a) a hand-written diffusers
``DDIMScheduler`` loop (``loop_overhead_baseline.py``) and (b) ``guidestack.engine.run.run_recipe``
with no stages, interleaved in one process:

* on a null denoiser (eps = 0, no network): the per-step cost of each loop itself, and their
  ratio (target <= 1.2);
* on a mid-size ``UNet2DModel`` (seeded random weights): the ratio of whole runs, where the
  network dominates.

Both loops compute the same thing; the script checks it (max |diff| < 1e-4) and prints a
Markdown table (docs/performance.md keeps the last one).

    python benchmarks/loop_overhead.py [--size 32] [--null-steps 200] [--unet-steps 20]
        [--channels 32,64,128,128] [--repeats 9] [--threads 1] [--clock cpu|wall]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import torch
from diffusers import DDPMScheduler, UNet2DModel

sys.path.insert(0, str(Path(__file__).resolve().parent))

from loop_overhead_baseline import diffusers_ddim_loop  # noqa: E402

from guidestack.engine.context import Observation  # noqa: E402
from guidestack.engine.prior import Prior, PriorOutput  # noqa: E402
from guidestack.engine.recipe import validate  # noqa: E402
from guidestack.engine.registry import load_registry  # noqa: E402
from guidestack.engine.run import run_recipe  # noqa: E402
from guidestack.plugins.priors.diffusers_prior import (  # noqa: E402
    DiffusersPrior,
    alphas_cumprod_from_scheduler_config,
)


class NullUNet(torch.nn.Module):
    """diffusers' side of the null denoiser: ``unet(x, t).sample`` is zeros."""

    def __init__(self) -> None:
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(0))  # device and dtype for the baseline

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> SimpleNamespace:
        return SimpleNamespace(sample=torch.zeros_like(x))


class NullPrior(Prior):
    """guidestack's side of the null denoiser: eps = 0, the same schedule."""

    kind = "null"

    def __init__(self, size: int, config: dict) -> None:
        super().__init__()
        self.image_size, self.channels, self.name = size, 3, "null"
        self.register_buffer("alphas_cumprod", alphas_cumprod_from_scheduler_config(config))

    def forward(self, x_t: torch.Tensor, t: torch.Tensor) -> PriorOutput:
        return PriorOutput(eps=torch.zeros_like(x_t))


def mid_size_unet(size: int, channels: tuple[int, ...]) -> UNet2DModel:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return UNet2DModel(
            sample_size=size,
            block_out_channels=channels,
            layers_per_block=2,
            down_block_types=("DownBlock2D",) * len(channels),
            up_block_types=("UpBlock2D",) * len(channels),
        ).eval()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--null-steps", type=int, default=200)
    parser.add_argument("--unet-steps", type=int, default=20)
    parser.add_argument("--channels", default="32,64,128,128")
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--clock",
        choices=["cpu", "wall"],
        default="cpu",
        help="cpu: this process's CPU time (robust on a shared machine); wall: elapsed time",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    config = dict(DDPMScheduler().config)
    config.pop("_use_default_values", None)  # else from_config takes DDIM's defaults for these
    config["clip_sample"] = False  # compare the raw DDIM update on both sides
    registry = load_registry(blocked=set(), entry_points=False)
    shape = (1, 3, args.size, args.size)
    obs = Observation(image=torch.zeros(shape))
    channels = tuple(int(c) for c in args.channels.split(","))
    unet = mid_size_unet(args.size, channels)
    params = sum(p.numel() for p in unet.parameters()) / 1e6
    cases = {
        "null": (NullUNet(), NullPrior(args.size, config), args.null_steps),
        "unet": (unet, DiffusersPrior(unet, config), args.unet_steps),
    }

    def recipe(steps: int):
        raw = {
            "description": "plain DDIM",
            "sampler": {"kind": "ddim", "steps": steps, "eta": 0.0, "clip_x0": False},
        }
        return validate(raw, registry, "<benchmark>")

    recipes = {name: recipe(steps) for name, (_, _, steps) in cases.items()}

    clock = time.process_time if args.clock == "cpu" else time.perf_counter

    def ours(name: str) -> tuple[torch.Tensor, float]:
        _, prior, _ = cases[name]
        start = clock()
        with torch.no_grad():
            result, _ = run_recipe(recipes[name], prior, obs, [args.seed], registry)
        return result.image, clock() - start

    def theirs(name: str) -> tuple[torch.Tensor, float]:
        net, _, steps = cases[name]
        return diffusers_ddim_loop(net, config, steps, args.seed, shape, clock=clock)

    times: dict[tuple[str, str], list[float]] = {}
    diffs: dict[str, float] = {}
    for name in cases:  # warm up
        ours(name), theirs(name)
    for _ in range(args.repeats):
        for name in cases:
            a, ta = ours(name)
            b, tb = theirs(name)
            times.setdefault((name, "ours"), []).append(ta)
            times.setdefault((name, "theirs"), []).append(tb)
            diffs[name] = max(diffs.get(name, 0.0), (a - b.clamp(-1, 1)).abs().max().item())

    def per_step(name: str, side: str) -> float:
        return statistics.median(times[(name, side)]) / cases[name][2] * 1000

    rows = [
        ("null denoiser", "null", f"{args.null_steps} steps"),
        (f"UNet2DModel {params:.1f} M", "unet", f"{args.unet_steps} steps"),
    ]
    print(
        f"DDIM eta 0, {args.size}x{args.size}, batch 1, {args.threads} thread(s), "
        f"{args.clock} time, median of {args.repeats} interleaved runs"
    )
    print()
    print(
        "| denoiser | steps | diffusers loop (ms/step) | guidestack loop (ms/step) | ratio | max abs diff |"
    )
    print("|---|---:|---:|---:|---:|---:|")
    for label, name, steps in rows:
        mt, mo = per_step(name, "theirs"), per_step(name, "ours")
        print(
            f"| {label} | {steps.split()[0]} | {mt:.3f} | {mo:.3f} | **{mo / mt:.3f}** "
            f"| {diffs[name]:.1e} |"
        )
    overhead = per_step("null", "ours") / per_step("null", "theirs")
    print()
    print(f"null-denoiser ratio {overhead:.3f} (target <= 1.2); outputs must agree to 1e-4")
    return 0 if max(diffs.values()) < 1e-4 else 1


if __name__ == "__main__":
    raise SystemExit(main())
