"""SHRED's own overhead: ``run_recipe`` with a ``shred`` stage against a hand-written loop of
the same algorithm (BIRD's: 10-jump DDIM with eta 0, x0 clipped and the direction re-derived,
the denoiser without gradient, MSE data term, Adam, rescaling of x_T to the sphere), on the cheap
offline Gaussian prior where Python and small-tensor costs show.

Both start from the same x_T (the per-sample generator of seed 0), so the outputs must agree
(checked, < 1e-4).  CPU time of this process (robust on a shared machine), interleaved, median
of ``--repeats``; one torch thread by default.

    python benchmarks/shred_overhead.py [--iterations 20] [--repeats 7] [--threads 1]
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

import torch

from guidestack.engine.context import Observation
from guidestack.engine.recipe import validate
from guidestack.engine.refs import DegradationRef
from guidestack.engine.registry import load_registry
from guidestack.engine.run import run_recipe
from guidestack.engine.schedule import jump_timesteps
from guidestack.plugins.priors.gaussian import load_shipped_prior
from guidestack.testing import face_batch


def hand_written(prior, operator, y, iterations: int, lr: float, seed: int) -> torch.Tensor:
    """The algorithm written out with python-float coefficients (no engine code)."""
    acp = [float(a) for a in prior.alphas_cumprod]
    grid = jump_timesteps(100, len(acp))
    shape = (1, prior.channels, prior.image_size, prior.image_size)
    radius = math.sqrt(math.prod(shape[1:]))
    target = operator.measure(y)
    gen = torch.Generator().manual_seed(seed)
    latent = torch.nn.Parameter(torch.randn(shape[1:], generator=gen)[None])
    with torch.no_grad():
        latent.mul_(radius / latent.norm())
    opt = torch.optim.Adam([latent], lr=lr)
    ts = {t: torch.full((1,), t) for t in grid}
    for k in range(iterations):
        opt.zero_grad(set_to_none=True)
        x = latent
        for i, t in enumerate(grid):
            a = acp[t]
            a_prev = acp[grid[i + 1]] if i + 1 < len(grid) else 1.0
            with torch.no_grad():
                eps = prior(x.detach(), ts[t]).eps
            x0 = ((x - math.sqrt(1 - a) * eps) / math.sqrt(a)).clamp(-1, 1)
            if a_prev >= 1.0:
                x = x0
                break
            eps = (x - math.sqrt(a) * x0) / math.sqrt(1 - a)
            x = math.sqrt(a_prev) * x0 + math.sqrt(1 - a_prev) * eps
        loss = (operator(x) - target).pow(2).flatten(1).mean(1)
        if k + 1 == iterations:
            break
        loss.sum().backward()
        opt.step()
        with torch.no_grad():
            latent.mul_(radius / latent.norm())
    return x.detach()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    registry = load_registry(blocked=set(), entry_points=False)
    prior = load_shipped_prior()
    y = face_batch(1, prior.image_size, seed=5)
    stage = {
        "use": "shred",
        "operator": {"use": "downsample", "factor": 4},
        "iterations": args.iterations,
        "lr": 0.003,
    }
    recipe = validate({"description": "shred", "stage": [stage]}, registry, "<benchmark>")
    operator = DegradationRef(use="downsample", factor=4).build(registry)
    obs = Observation(image=y)

    def ours() -> tuple[torch.Tensor, float]:
        start = time.process_time()
        result, _ = run_recipe(recipe, prior, obs, [0], registry)
        return result.image, time.process_time() - start

    def theirs() -> tuple[torch.Tensor, float]:
        start = time.process_time()
        image = hand_written(prior, operator, y, args.iterations, 0.003, 0)
        return image, time.process_time() - start

    ours(), theirs()
    t_ours, t_theirs, diff = [], [], 0.0
    for _ in range(args.repeats):
        a, ta = ours()
        b, tb = theirs()
        t_ours.append(ta)
        t_theirs.append(tb)
        diff = max(diff, float((a - b.clamp(-1, 1)).abs().max()))
    mo = statistics.median(t_ours) / args.iterations * 1000
    mt = statistics.median(t_theirs) / args.iterations * 1000
    print(
        f"SHRED sr4 on gaussian-faces-64, 10 jumps, {args.iterations} iterations, "
        f"{args.threads} thread(s), median of {args.repeats} interleaved runs"
    )
    print()
    print(
        "| hand-written loop (ms/iteration) | guidestack SHRED (ms/iteration) | ratio | max abs diff |"
    )
    print("|---:|---:|---:|---:|")
    print(f"| {mt:.2f} | {mo:.2f} | **{mo / mt:.3f}** | {diff:.1e} |")
    return 0 if diff < 1e-4 else 1


if __name__ == "__main__":
    raise SystemExit(main())
