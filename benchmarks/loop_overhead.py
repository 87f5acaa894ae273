"""How much does guidestack's loop cost on top of the denoiser?

Plain DDIM (eta 0), 50 steps, the same tiny diffusers UNet2DModel and the same seed, run by
(a) a hand-written diffusers DDIMScheduler loop and (b) ``guidestack.engine.run.run_recipe``
with no stages.  Prints both median times, the ratio (target <= 1.05) and the largest output
difference (must be < 1e-4: the two loops compute the same thing).

    python benchmarks/loop_overhead.py [--size 32] [--steps 50] [--repeats 7]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from loop_overhead_baseline import diffusers_ddim_loop  # noqa: E402

from guidestack.engine.context import Observation  # noqa: E402
from guidestack.engine.recipe import validate  # noqa: E402
from guidestack.engine.registry import load_registry  # noqa: E402
from guidestack.engine.run import run_recipe  # noqa: E402
from guidestack.plugins.priors.diffusers_prior import load_diffusers_prior  # noqa: E402
from guidestack.plugins.priors.tiny import save_tiny_unet  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))

    with tempfile.TemporaryDirectory() as folder:
        save_tiny_unet(folder, sample_size=args.size)
        prior = load_diffusers_prior(folder)
    unet = prior.unet
    config = dict(prior.scheduler_config)
    config["clip_sample"] = False  # compare the raw DDIM update on both sides
    registry = load_registry(blocked=set(), entry_points=False)
    recipe = validate(
        {
            "description": "plain DDIM",
            "sampler": {"kind": "ddim", "steps": args.steps, "eta": 0.0, "clip_x0": False},
        },
        registry,
        "<benchmark>",
    )
    shape = (1, prior.channels, prior.image_size, prior.image_size)
    obs = Observation(image=torch.zeros(shape))

    def ours() -> tuple[torch.Tensor, float]:
        start = time.perf_counter()
        with torch.no_grad():
            result, _ = run_recipe(recipe, prior, obs, [args.seed], registry)
        return result.image, time.perf_counter() - start

    def theirs() -> tuple[torch.Tensor, float]:
        return diffusers_ddim_loop(unet, config, args.steps, args.seed, shape)

    ours(), theirs()  # warm up
    t_ours, t_theirs = [], []
    for _ in range(args.repeats):
        a, ta = ours()
        b, tb = theirs()
        t_ours.append(ta)
        t_theirs.append(tb)
    diff = (a - b.clamp(-1, 1)).abs().max().item()
    mo, mt = statistics.median(t_ours), statistics.median(t_theirs)
    print(f"UNet2DModel {args.size}x{args.size}, DDIM {args.steps} steps, median of {args.repeats}")
    print(f"diffusers loop : {mt * 1000:8.1f} ms")
    print(f"guidestack loop: {mo * 1000:8.1f} ms")
    print(f"ratio          : {mo / mt:8.3f}  (target <= 1.05)")
    print(f"max |diff|     : {diff:.2e}  (must be < 1e-4)")
    return 0 if diff < 1e-4 else 1


if __name__ == "__main__":
    raise SystemExit(main())
