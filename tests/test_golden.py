"""The ``*-official`` presets reproduce the official code of each method (tests/data/golden).

Each golden record holds what the official code computed, run once outside the project on a tiny
seeded denoiser (provenance in tests/data/golden/README.md).  Here the preset runs through the
public API (``gs.load_recipe`` with the record's scaled-down hyper-parameters as ``set``,
``gs.run`` with the record's seed, ``output_size="prior"``) and every stored tensor is compared:
max abs difference < 1e-4.  Latents come from the ``callback``: the loop's ``step`` events
(``state.x_t``, ``x0``, ``x_prev``), SHRED's ``iteration`` events (``x_T``, ``x0``) and the
``langevin`` stage's events; CODE's inverted latents from a probe stage that reads the
``ode-inversion`` stage's ``ctx.cache`` and replays the notebook's recorded noise through
``RunContext.noise_source`` (the notebook's Langevin noise is interleaved with discarded draws:
no seed gives it).

The clean recipes (the presets' parents) differ from the same records by 0.03 to 3.7: each
convention option is needed (the last test).
"""

from __future__ import annotations

from typing import Any

import golden
import pytest
import torch

import guidestack as gs
from guidestack.engine.config import SamplerConfig
from guidestack.engine.context import Observation, RunContext
from guidestack.engine.errors import GuidestackError, RecipeError
from guidestack.engine.hookspecs import hookimpl
from guidestack.engine.loop_api import RunResult
from guidestack.engine.sampler import grid_for, transitions_for
from guidestack.engine.schedule import respaced_timesteps
from guidestack.engine.stage import Stage
from guidestack.plugins.stages.odedit import Langevin, LangevinOptions
from guidestack.testing import registry_with

TOL = 1e-4

#: preset -> (its clean parent, the record(s) it reproduces)
PRESETS = {
    "pgdiff-restore-official": ("restore", ["pgdiff-restore", "pgdiff-restore-repeats"]),
    "pgdiff-colorize-official": ("colorize", ["pgdiff-colorize"]),
    "pgdiff-inpaint-official": ("inpaint", ["pgdiff-inpaint"]),
    "difface-official": ("difface", ["difface-restore"]),
    "difface-inpaint-official": ("difface-inpaint", ["difface-inpaint"]),
    "code-official": ("code", ["code"]),
    "bird-inpaint-official": ("shred-inpaint", ["bird-inpaint"]),
    "bird-sr-official": ("shred-sr4", ["bird-sr"]),
}

#: the convention options each preset sets (paths as ``--set``'s), nothing else
CONVENTIONS = {
    "pgdiff-restore-official": {"sampler.respacing": "stride"},
    "pgdiff-colorize-official": {
        "sampler.respacing": "stride",
        "stage.color-statistics.stop_gradient": False,
    },
    "pgdiff-inpaint-official": {"sampler.respacing": "stride"},
    "difface-official": {"sampler.eps": "raw", "stage.difface.first_call": "below"},
    "difface-inpaint-official": {"sampler.eps": "raw", "stage.difface.first_call": "below"},
    "code-official": {
        "sampler.last_step": "above",
        "stage.ode-inversion.start": "image",
        "stage.ode-inversion.noise_draws": 2,
        "stage.langevin.noise_free_eps": "raw",
        "stage.langevin.split": "floor",
    },
    "bird-inpaint-official": {"stage.shred.grid": "leading", "stage.shred.project_initial": False},
    "bird-sr-official": {
        "stage.shred.grid": "leading",
        "stage.shred.project_initial": False,
        "stage.shred.lr": 0.001,  # configs/super_resolution.yml (the clean recipe: the paper's)
    },
}


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double().reshape(b.shape) - b.double()).abs().max())


class Events:
    """Records the callback's events: loop steps by t, SHRED iterations, Langevin stages."""

    def __init__(self) -> None:
        self.steps: list[dict[str, Any]] = []
        self.iterations: list[dict[str, Any]] = []
        self.langevin: list[dict[str, Any]] = []

    def __call__(self, event: str, **info: Any) -> None:
        if event == "step":
            s = info["state"]
            self.steps.append(
                {
                    "t": info["t"],
                    "x_t": s.x_t.detach().clone(),
                    "x0": s.x0.detach().clone(),
                    "x_prev": s.x_prev.detach().clone(),
                }
            )
        elif event == "iteration":
            self.iterations.append({"x_T": info["x_T"], "x0": info["x0"].clone()})
        elif event == "langevin":
            self.langevin.append({"t": info["t"], "alpha": info["alpha"], "x": info["x"].clone()})

    def by_t(self) -> dict[int, dict[str, Any]]:
        return {s["t"]: s for s in self.steps}


def run(
    preset: str,
    record: dict,
    overrides: dict[str, Any],
    *,
    seed: int | None = None,
    recipe: Any = None,
    registry: Any = None,
) -> tuple[gs.Result, Events]:
    events = Events()
    mask = record.get("missing")
    result = gs.run(
        recipe if recipe is not None else gs.load_recipe(preset, set=overrides),
        golden.prior_for(record),
        record["observation"],
        mask=mask,
        seeds=[record["seed"] if seed is None else seed],
        output_size="prior",
        callback=events,
        registry=registry,
    )
    return result, events


def compare_steps(record: dict, events: Events) -> dict[str, float]:
    """Every stored latent of a loop run (PGDiff, DifFace), by name."""
    visited = [s["t"] for s in events.steps]
    assert visited == record["visited_t"]
    diffs = {"x_start" if "x_start" in record else "x_T": 0.0}
    first = events.steps[0]["x_t"]
    diffs["x_start" if "x_start" in record else "x_T"] = max_diff(
        first, record["x_start" if "x_start" in record else "x_T"]
    )
    for j, k in enumerate(record["steps_kept"]):
        # the step's x_t before its first repeat: the previous step's result
        x_t = events.steps[k - 1]["x_prev"] if k > 0 else first
        diffs[f"x_t[{j}]"] = max_diff(x_t, record["x_t"][j])
        diffs[f"x0[{j}]"] = max_diff(events.steps[k]["x0"], record["x0"][j])
        diffs[f"x_prev[{j}]"] = max_diff(events.steps[k]["x_prev"], record["x_prev"][j])
    return diffs


# --- PGDiff ------------------------------------------------------------------------------------

PGDIFF = {
    "pgdiff-restore": (
        "pgdiff-restore-official",
        {"stage.smooth-semantics.restorer": {"use": "identity"}},
    ),
    "pgdiff-restore-repeats": (
        "pgdiff-restore-official",
        {
            "stage.smooth-semantics.restorer": {"use": "identity"},
            # --N 2 --s_start 0.019 --s_end 0.014: respaced indices 15..18 = t 750..900
            "guidance.repeats": 2,
            "guidance.repeat_window": [700, 900],
        },
    ),
    "pgdiff-colorize": ("pgdiff-colorize-official", {}),
    "pgdiff-inpaint": ("pgdiff-inpaint-official", {}),
}


@pytest.mark.parametrize("name", list(PGDIFF))
def test_pgdiff_presets_reproduce_inference_pgdiff(name):
    preset, extra = PGDIFF[name]
    record = golden.load(name)
    result, events = run(preset, record, {"sampler.steps": 20, **extra})
    diffs = compare_steps(record, events)
    # the official sampler returns the last x_prev unclamped; guidestack's output is clamped
    diffs["final"] = max_diff(result.restored, record["final"].clamp(-1, 1))
    assert max(diffs.values()) < TOL, diffs
    repeats = 4 if name.endswith("repeats") else 0
    assert result.entry["model_calls"] == 20 + repeats


# --- DifFace -----------------------------------------------------------------------------------

DIFFACE = {
    "difface-restore": ("difface-official", {"stage.difface.start": 400}),
    "difface-inpaint": (
        "difface-inpaint-official",
        {"stage.difface.start": 480, "stage.difface.fill_missing": False},
    ),
}


@pytest.mark.parametrize("name", list(DIFFACE))
def test_difface_presets_reproduce_difface_sampler(name):
    preset, extra = DIFFACE[name]
    record = golden.load(name)
    overrides = {"stage.difface.restorer": {"use": "identity"}, **extra}
    result, events = run(preset, record, overrides)
    diffs = compare_steps(record, events)
    diffs["final"] = max_diff(result.restored, record["final"])
    assert max(diffs.values()) < TOL, diffs
    assert result.entry["start_t"] == record["visited_t"][0] == extra["stage.difface.start"] - 4


# --- SHRED / BIRD ------------------------------------------------------------------------------

BIRD = {
    "bird-inpaint": ("bird-inpaint-official", {}),
    # the record's observation is the full-resolution face, as BIRD's script measures it
    "bird-sr": ("bird-sr-official", {"stage.shred.operator.observation": "full"}),
}


@pytest.mark.parametrize("name", list(BIRD))
def test_bird_presets_reproduce_bird_scripts(name):
    preset, extra = BIRD[name]
    record = golden.load(name)
    iterations = record["task_config"]["Optimization_steps"]
    assert record["task_config"]["lr"] == gs.load_recipe(preset).stages[0].lr
    result, events = run(preset, record, {"stage.shred.iterations": iterations, **extra})
    assert result.entry["stages"]["shred"]["iterations"] == [iterations]
    assert len(events.iterations) == iterations
    diffs = {}
    for j, k in enumerate(record["iterations_kept"]):
        diffs[f"x_T[{k}]"] = max_diff(events.iterations[k]["x_T"], record["x_T"][j])
        diffs[f"x0[{k}]"] = max_diff(events.iterations[k]["x0"], record["x0"][j])
    diffs["final"] = max_diff(result.restored, record["final"])
    assert max(diffs.values()) < TOL, diffs


# --- CODE --------------------------------------------------------------------------------------


def replaying_probe(noise: list[torch.Tensor], seen: dict[str, Any]) -> type[Stage]:
    """A test-only stage: replays ``noise`` (one tensor per draw, in order) through
    ``RunContext.noise_source`` and keeps the ``ode-inversion`` stage's latents."""

    def source(shape: tuple[int, ...]) -> torch.Tensor:
        seen["draws"] = seen.get("draws", 0) + 1
        return noise.pop(0).reshape(shape).clone()

    class ReplayNoise(Stage):
        name = "golden-replay-noise"
        description = "test only: replay recorded noise, keep the inverted latents"

        def setup(self, ctx: RunContext) -> None:
            ctx.noise_source = source

        @hookimpl
        def finalize(self, ctx: RunContext, result: RunResult) -> None:
            seen["latents"] = ctx.cache["ode-inversion.latents"]

    return ReplayNoise


def test_code_preset_reproduces_the_notebook():
    record = golden.load("code")
    p = record["parameters"]
    overrides = {"stage.langevin.updates": p["langevin_steps"], "stage.langevin.step_size": 1.15e-5}
    recipe = gs.load_recipe("code-official", set=overrides).resolved()
    # the notebook's draws in order: cell 6's two 0.01-noise draws, then cell 7's Langevin noise
    noise = [*record["inversion_noise"], *record["langevin_noise"]]
    seen: dict[str, Any] = {}
    probe = replaying_probe(list(noise), seen)
    recipe["stage"].append({"use": probe.name})
    record = {**record, "seed": 0}
    result, events = run("", record, {}, recipe=recipe, registry=registry_with(probe))
    assert seen["draws"] == len(noise) == 18
    latents = seen["latents"]
    assert min(latents) == 0 and torch.equal(latents[0][0], record["latent_t0"])
    diffs = {f"inverted[{t}]": max_diff(latents[t], v) for t, v in record["inverted"].items()}
    stages = record["langevin"]
    assert [e["t"] for e in events.langevin] == [e["t"] for e in stages]
    for j, (ours, theirs) in enumerate(zip(events.langevin, stages, strict=True)):
        assert ours["alpha"] == pytest.approx(theirs["epsilon"], rel=1e-6)
        x_in = events.langevin[j - 1]["x"] if j % 4 else None
        if x_in is not None:
            diffs[f"langevin[{j}].x_in"] = max_diff(x_in, theirs["x_in"])
        diffs[f"langevin[{j}].x_out"] = max_diff(ours["x"], theirs["x_out"])
    steps = events.by_t()
    diffs["langevin[4].x_in"] = max_diff(steps[105]["x_prev"], stages[4]["x_in"])
    for t, v in record["decoded"].items():
        diffs[f"decoded[{t}]"] = max_diff(steps[t]["x_prev"], v)
    diffs["final"] = max_diff(result.restored, record["final"].clamp(-1, 1))
    assert max(diffs.values()) < TOL, diffs


# --- the presets -------------------------------------------------------------------------------


def _flat(table: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in table.items():
        if isinstance(value, dict) and key not in ("restorer", "operator", "threshold"):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _resolved(name: str, prior_name: str = "", prior_kind: str = "") -> dict[str, Any]:
    recipe = gs.load_recipe(name).resolved()
    stages = {s.get("id", s["use"]): s for s in recipe.pop("stage")}
    recipe.pop("description")
    return _flat({**recipe, "stage": stages})


@pytest.mark.parametrize("preset", list(PRESETS))
def test_each_preset_sets_only_convention_options(preset):
    parent, _ = PRESETS[preset]
    ours, theirs = _resolved(preset), _resolved(parent)
    changed = {k: v for k, v in ours.items() if theirs.get(k) != v}
    assert changed == CONVENTIONS[preset]
    assert set(ours) == set(theirs)


SMOKE = {
    "pgdiff-restore-official": {"sampler.steps": 5},
    "pgdiff-colorize-official": {"sampler.steps": 5},
    "pgdiff-inpaint-official": {"sampler.steps": 5},
    "difface-official": {"sampler.steps": 25},
    "difface-inpaint-official": {"sampler.steps": 25},
    "code-official": {
        "sampler.steps": 20,
        "stage.ode-inversion.depth": 950,
        "stage.langevin.updates": 8,
        "stage.langevin.at": [100, 950],
    },
    "bird-inpaint-official": {"stage.shred.iterations": 2},
    "bird-sr-official": {"stage.shred.iterations": 2},
}


@pytest.fixture(scope="module")
def offline_prior():
    return gs.load_prior("offline")


@pytest.mark.parametrize("preset", list(PRESETS))
def test_each_preset_runs_on_the_offline_prior(preset, offline_prior):
    from conftest import REPO

    recipe = gs.load_recipe(preset, set=SMOKE[preset])
    example = recipe.example
    mask = REPO / example["mask"] if "mask" in example else None
    result = gs.run(
        recipe, offline_prior, REPO / example["image"], mask=mask, seed=0, output_size="prior"
    )
    assert torch.isfinite(result.image).all()
    assert result.image.abs().max() <= 1.0 and result.image.std() > 0.05
    grid = result.report["inputs"][0]
    assert grid["model_calls"] > 0


# --- every convention is needed ----------------------------------------------------------------


def _parent_run(name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(the clean parent's output on the record's setup, the official final image)."""
    record = golden.load(name)
    if name in PGDIFF:
        preset, extra = PGDIFF[name]
        overrides = {"sampler.steps": 20, **extra}
        final = record["final"].clamp(-1, 1)
    elif name in DIFFACE:
        preset, extra = DIFFACE[name]
        overrides = {"stage.difface.restorer": {"use": "identity"}, **extra}
        final = record["final"]
    else:
        preset, extra = BIRD[name]
        overrides = {"stage.shred.iterations": 20, **extra}
        if name == "bird-sr":
            overrides["stage.shred.lr"] = 0.001
        final = record["final"]
    parent = gs.load_recipe(PRESETS[preset][0], set=overrides)
    result, _ = run(preset, record, overrides, recipe=parent)
    return result.restored, final


@pytest.mark.parametrize("name", ["pgdiff-restore", "difface-restore", "bird-sr"])
def test_the_clean_parent_recipes_do_not_reproduce_the_official_code(name):
    ours, final = _parent_run(name)
    assert max_diff(ours, final) > 0.03


def test_noise_source_replaces_the_generators():
    """``RunContext.noise_source`` is what ``randn`` returns, in the run's dtype and device."""
    calls: list[tuple[int, ...]] = []

    def source(shape: tuple[int, ...]) -> torch.Tensor:
        calls.append(shape)
        return torch.full(shape, 2.0, dtype=torch.float64)

    recipe = gs.load_recipe("sample")
    ctx = RunContext(
        prior=golden.gaussian_prior(),
        observation=Observation(image=torch.zeros(1, 3, 16, 16)),
        timesteps=[999],
        sampler=recipe.sampler,
        guidance=recipe.guidance,
        generators=[torch.Generator().manual_seed(0)],
    )
    plain = ctx.randn()
    ctx.noise_source = source
    replayed = ctx.randn((1, 3, 4, 4))
    assert calls == [(1, 3, 4, 4)] and replayed.dtype == torch.float32
    assert torch.equal(replayed, torch.full((1, 3, 4, 4), 2.0))
    assert not torch.equal(plain, torch.full_like(plain, 2.0))


# --- the convention options themselves -----------------------------------------------------------


@pytest.mark.parametrize(
    "sampler,problem",
    [
        ({"kind": "ddim", "respacing": "stride"}, "respacing applies to kind = 'ddpm'"),
        ({"kind": "ddpm", "eps": "raw"}, "eps applies to kind = 'ddim'"),
        ({"kind": "ddpm", "last_step": "above"}, "last_step applies to kind = 'ddim'"),
    ],
)
def test_sampler_conventions_are_refused_where_they_mean_nothing(sampler, problem):
    with pytest.raises(RecipeError, match=problem):
        gs.load_recipe({"extends": "sample", "sampler": sampler})


def test_clean_defaults_and_the_stride_grid():
    clean = SamplerConfig(kind="ddpm", steps=20)
    assert (clean.respacing, clean.eps, clean.last_step) == ("sections", "rederived", "data")
    assert grid_for(clean, 1000) == respaced_timesteps(20)
    assert grid_for(clean, 1000)[:3] == [999, 946, 894]
    stride = SamplerConfig(kind="ddpm", steps=20, respacing="stride")
    assert grid_for(stride, 1000) == list(range(950, -1, -50))
    assert grid_for(stride, 1000, start=420) == [420, *range(400, -1, -50)]
    hundred = SamplerConfig(kind="ddpm", steps=100, respacing="stride")
    assert grid_for(hundred, 1000) == list(range(990, -1, -10))  # PGDiff's README: ddpm100


def test_last_step_above_goes_back_up_to_the_grid_point_above():
    prior = golden.gaussian_prior()
    grid = [10, 5, 0]
    data = transitions_for(prior.alphas_cumprod, grid)
    above = transitions_for(prior.alphas_cumprod, grid, last_step="above")
    assert [a.abar_prev for a in data[:2]] == [a.abar_prev for a in above[:2]]
    assert data[-1].abar_prev == 1.0 and data[-1].final
    assert above[-1].abar_prev == float(prior.alphas_cumprod[5]) and not above[-1].final
    assert not above[-1].noisy
    # one grid point: nothing above it, the step goes to the data
    assert transitions_for(prior.alphas_cumprod, [0], last_step="above")[0].final


def test_floor_split_is_the_notebooks_k_over_annealing():
    def counts(split: str, k: int) -> list[int]:
        options = LangevinOptions(use="langevin", annealing=4, split=split)
        return Langevin(options).stage_counts(k)

    assert counts("spread", 250) == [63, 63, 62, 62]
    assert counts("floor", 250) == [62] * 4
    assert counts("floor", 10) == [2] * 4
    # 4 // 4 = 1: the notebook's loop updates only `if steps > 1`
    assert counts("floor", 4) == counts("floor", 7) == counts("floor", 3) == [0] * 4


def test_first_call_below_needs_a_grid_point_below_the_start():
    recipe = gs.load_recipe(
        "difface-official",
        set={"stage.difface.start": 0, "stage.difface.restorer": {"use": "identity"}},
    )
    face = golden.load("difface-restore")["observation"]
    with pytest.raises(GuidestackError, match="needs a grid point below start 0"):
        gs.run(recipe, golden.gaussian_prior(), face, seeds=[0], output_size="prior")
    below = gs.run(
        gs.load_recipe("difface-official", set={"stage.difface.start": 4}),
        golden.gaussian_prior(),
        face,
        seeds=[0],
        output_size="prior",
    )
    assert below.entry["start_t"] == 0 and below.entry["model_calls"] == 1
