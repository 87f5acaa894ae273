"""Images per second for batches of 1, 2, 4 and 8, in the default (batched) and the
deterministic (per-sample, bit-exact) mode.

Recipes on the offline Gaussian prior (``gaussian-faces-64``): plain DDIM, PGDiff restoration,
a guided recipe with the identity and perceptual networks (seeded random weights, so nothing is
downloaded), and SHRED; and plain DDIM on the project's tiny ``UNet2DModel``, whose raw forward
pass is measured too (the ceiling a batched loop can reach).  Every configuration, mode and batch
size runs once per repeat, interleaved in a shuffled order, and the table shows medians; the last column is the
per-image speed-up of batch 8 over batch 1.  Times are this process's CPU time (robust on a
shared machine); one torch thread by default.

    python benchmarks/batch_throughput.py [--repeats 3] [--threads 1] [--steps 20]

Prints a Markdown table (docs/performance.md keeps the last one).
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch

from guidestack.engine.context import Observation
from guidestack.engine.registry import load_registry
from guidestack.engine.run import run_recipe
from guidestack.plugins.priors.diffusers_prior import DiffusersPrior
from guidestack.plugins.priors.gaussian import load_shipped_prior
from guidestack.plugins.priors.tiny import build_tiny_unet, tiny_scheduler
from guidestack.testing import face_batch, make_recipe

BATCHES = (1, 2, 4, 8)
MODES = ("default", "deterministic")


def network_files(folder: Path) -> tuple[Path, Path]:
    """Seeded random InceptionResnetV1 and LPIPS AlexNet backbone weights (speed only)."""
    import lpips
    from facenet_pytorch.models.inception_resnet_v1 import InceptionResnetV1

    with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.manual_seed(0)
        facenet = InceptionResnetV1(pretrained=None).eval()
        backbone = lpips.pretrained_networks.alexnet(requires_grad=False, pretrained=False)
    torch.save(facenet.state_dict(), folder / "facenet.pt")
    torch.save(backbone.state_dict(), folder / "alex.pt")
    return folder / "facenet.pt", folder / "alex.pt"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--steps", type=int, default=20, help="sampler steps of the loop recipes")
    parser.add_argument("--unet-size", type=int, default=32)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    registry = load_registry(blocked=set(), entry_points=False)
    folder = Path(tempfile.mkdtemp(prefix="guidestack-bench-"))
    facenet, alex = network_files(folder)

    gauss = load_shipped_prior()
    unet = build_tiny_unet(args.unet_size)
    unet_prior = DiffusersPrior(unet, dict(tiny_scheduler().config))
    n = max(BATCHES)
    faces = face_batch(n, gauss.image_size)
    gauss_obs = Observation(image=faces, reference=faces.flip(0))
    unet_obs = Observation(image=face_batch(n, args.unet_size))
    steps = args.steps
    configs = {
        ("Gaussian 64x64", f"DDIM {steps} steps"): (
            gauss,
            gauss_obs,
            {"sampler": {"kind": "ddim", "steps": steps}},
        ),
        ("Gaussian 64x64", f"PGDiff restore, DDPM {steps} steps"): (
            gauss,
            gauss_obs,
            {
                "sampler": {"kind": "ddpm", "steps": steps},
                "guidance": {"rule": "dynamic", "scale": 0.1},
                "stage": [{"use": "smooth-semantics"}],
            },
        ),
        ("Gaussian 64x64", "identity + perceptual, DDPM 6 steps"): (
            gauss,
            gauss_obs,
            {
                "sampler": {"kind": "ddpm", "steps": 6},
                "guidance": {"rule": "dynamic", "scale": 0.1},
                "stage": [
                    {"use": "perceptual", "backbone": str(alex)},
                    {"use": "identity", "weights": str(facenet), "size": 112},
                ],
            },
        ),
        ("Gaussian 64x64", "SHRED sr4, 5 iterations"): (
            gauss,
            gauss_obs,
            {
                "stage": [
                    {
                        "use": "shred",
                        "operator": {"use": "downsample", "factor": 4},
                        "iterations": 5,
                    }
                ]
            },
        ),
        (f"UNet2DModel {args.unet_size}x{args.unet_size}", f"DDIM {steps} steps"): (
            unet_prior,
            unet_obs,
            {"sampler": {"kind": "ddim", "steps": steps}},
        ),
    }
    recipes = {
        (key, mode): make_recipe(
            {**raw, "sampler": {**raw.get("sampler", {}), "deterministic": mode != "default"}},
            registry,
        )
        for key, (_, _, raw) in configs.items()
        for mode in MODES
    }

    def run_once(key, mode: str, b: int) -> float:
        prior, obs, _ = configs[key]
        start = time.process_time()
        run_recipe(
            recipes[(key, mode)], prior, obs.select(list(range(b))), list(range(b)), registry
        )
        return time.process_time() - start

    x = unet_obs.image

    def raw_unet(b: int) -> float:
        t = torch.full((b,), 500)
        start = time.process_time()
        with torch.no_grad():
            for _ in range(steps):
                unet(x[:b], t)
        return time.process_time() - start

    jobs: list[tuple[tuple, Callable[[], float]]] = []
    for key in configs:
        for mode in MODES:
            for b in BATCHES:
                jobs.append(
                    ((key, mode, b), lambda key=key, mode=mode, b=b: run_once(key, mode, b))
                )
    for b in BATCHES:
        jobs.append(((("raw UNet forward", f"{steps} calls"), "-", b), lambda b=b: raw_unet(b)))
    for _, job in jobs:  # warm up (lazy initialisations, model caches)
        job()
    times: dict[tuple, list[float]] = {}
    order = random.Random(0)
    for _ in range(args.repeats):  # a new order each repeat: no job always follows the same one
        for name, job in order.sample(jobs, len(jobs)):
            times.setdefault(name, []).append(job())

    print(
        f"images per CPU second, {args.threads} torch thread(s), median of {args.repeats} "
        "interleaved runs"
    )
    print()
    header = " | ".join(f"batch {b}" for b in BATCHES)
    print(f"| prior | recipe | mode | {header} | batch 8 / batch 1 per image |")
    print("|---|---|---|" + "---:|" * (len(BATCHES) + 1))
    rows = list(dict.fromkeys((key, mode) for (key, mode, _), _ in jobs))
    for key, mode in rows:
        rate = {b: b / statistics.median(times[(key, mode, b)]) for b in BATCHES}
        cells = " | ".join(f"{rate[b]:.2f}" for b in BATCHES)
        print(f"| {key[0]} | {key[1]} | {mode} | {cells} | **{rate[8] / rate[1]:.2f}x** |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
