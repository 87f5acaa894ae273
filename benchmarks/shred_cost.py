"""SHRED's cost per iteration: seconds and peak memory for delta t in {50, 100, 200} and both
gradient modes, on a tiny randomly initialised UNet2DModel (the diffusers code path of real
models at a size a CPU runs in seconds).

Times are per iteration of a real run (``run_recipe``: forward jumps, loss, backward, Adam
step, sphere projection), median over ``--repeats`` runs, both wall time and this process's CPU
time (the CPU time is the robust number on a shared machine; one torch thread by default).  Peak memory is the peak
of torch's CPU allocations during one forward + backward (the profiler's memory events; Python's
tracemalloc does not see torch's allocator), after a warm-up iteration.  Model calls per
iteration are counted by the engine for an iteration with a backward pass: full backprop with
checkpointing recomputes each jump once.

Run: ``python benchmarks/shred_cost.py [--size 32] [--iterations 5] [--repeats 3]``; prints a
Markdown table (docs/performance.md keeps the last one).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch.profiler import ProfilerActivity, profile

from guidestack.engine.config import GuidanceConfig, SamplerConfig
from guidestack.engine.context import Observation, RunContext
from guidestack.engine.recipe import validate
from guidestack.engine.registry import load_registry
from guidestack.engine.run import make_generators, run_recipe
from guidestack.engine.sampler import Loop
from guidestack.engine.stageset import StageSet
from guidestack.plugins.priors.diffusers_prior import DiffusersPrior
from guidestack.plugins.priors.tiny import build_tiny_unet, tiny_scheduler
from guidestack.plugins.stages.shred import Shred, ShredOptions

MODES = {
    "straight-through": {"gradient": "straight-through"},
    "full (checkpointed)": {"gradient": "full", "checkpoint": True},
    "full (no checkpointing)": {"gradient": "full", "checkpoint": False},
}
DELTAS = (50, 100, 200)


def peak_cpu_bytes(fn) -> int:
    """Peak of torch's CPU allocations while ``fn`` runs (allocations minus frees in time order)."""
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    current = peak = 0
    for event in sorted(prof.events(), key=lambda e: e.time_range.start):
        current += event.self_cpu_memory_usage
        peak = max(peak, current)
    return peak


def stage_options(delta: int, mode: dict, iterations: int) -> dict:
    return {
        "use": "shred",
        "operator": {"use": "downsample", "factor": 4},
        "delta": delta,
        "iterations": iterations,
        **mode,
    }


def peak_memory(prior, registry, y, options: dict) -> int:
    stage = Shred(ShredOptions.model_validate(options))
    ctx = RunContext(
        prior=prior,
        observation=Observation(image=y),
        timesteps=[prior.num_train_timesteps - 1],
        sampler=SamplerConfig(),
        guidance=GuidanceConfig(),
        generators=make_generators([0] * y.shape[0], "cpu"),
        registry=registry,
    )
    stage.setup(ctx)
    loop = Loop(ctx, StageSet([stage]))
    x_t = torch.nn.Parameter(ctx.randn())
    grid = stage.grid(ctx)

    def iteration() -> None:
        total, _ = stage.losses(ctx, loop, stage.render(ctx, x_t, grid))
        total.sum().backward()

    iteration()
    return peak_cpu_bytes(iteration)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=32, help="image side of the tiny UNet")
    parser.add_argument("--iterations", type=int, default=5, help="SHRED iterations per run")
    parser.add_argument("--repeats", type=int, default=3, help="runs per setting (median)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = parser.parse_args()
    if args.iterations < 2:
        parser.error("--iterations must be at least 2")
    torch.set_num_threads(args.threads)
    registry = load_registry(entry_points=False)
    prior = DiffusersPrior(build_tiny_unet(args.size), dict(tiny_scheduler().config))
    y = torch.rand(1, 3, args.size, args.size, generator=torch.Generator().manual_seed(0)) * 2 - 1

    rows = []
    for delta in DELTAS:
        for name, mode in MODES.items():
            options = stage_options(delta, mode, args.iterations)
            recipe = validate({"description": "bench", "stage": [options]}, registry, "bench")
            run_recipe(recipe, prior, Observation(image=y), [0], registry)  # warm-up
            wall, cpu, calls = [], [], 0
            for _ in range(args.repeats):
                start, start_cpu = time.perf_counter(), time.process_time()
                _, ctx = run_recipe(recipe, prior, Observation(image=y), [0], registry)
                wall.append((time.perf_counter() - start) / args.iterations)
                cpu.append((time.process_time() - start_cpu) / args.iterations)
                # the last iteration has no backward pass: count a full one
                jumps = len(ctx.report["grid"])
                calls = (ctx.model_calls - jumps) // (args.iterations - 1)
            peak = peak_memory(prior, registry, y, options)
            rows.append((delta, name, calls, statistics.median(wall), statistics.median(cpu), peak))

    print(
        f"tiny UNet2DModel {args.size}x{args.size} (0.65 M parameters), torch "
        f"{torch.__version__}, {torch.get_num_threads()} CPU threads, "
        f"{args.iterations} iterations x {args.repeats} runs\n"
    )
    print(
        "| delta t | gradient | model calls / iteration | wall ms / iteration | CPU ms / iteration "
        "| peak memory (MB) |"
    )
    print("|---:|---|---:|---:|---:|---:|")
    for delta, name, calls, wall, cpu, peak in rows:
        print(
            f"| {delta} | {name} | {calls} | {wall * 1000:.1f} | {cpu * 1000:.1f} | {peak / 1e6:.2f} |"
        )


if __name__ == "__main__":
    main()
