"""Timestep grids: equal to diffusers' and guided-diffusion's, and the documented start/jump rules."""

from __future__ import annotations

import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler

from guidestack.engine.errors import UsageError
from guidestack.engine.schedule import (
    alpha_bar_at,
    check_timesteps,
    ddim_timesteps,
    jump_timesteps,
    respaced_timesteps,
    step_pairs,
    window_contains,
)

STEP_COUNTS = [1, 2, 3, 6, 7, 10, 25, 50, 100, 250, 333, 999, 1000]


def _diffusers(
    n: int, spacing: str, T: int = 1000, offset: int = 0, cls=DDIMScheduler
) -> list[int]:
    sched = cls(num_train_timesteps=T, timestep_spacing=spacing, steps_offset=offset)
    sched.set_timesteps(n)
    return [int(t) for t in sched.timesteps]


@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
def test_ddim_grid_equals_diffusers(spacing):
    for n in STEP_COUNTS:
        assert ddim_timesteps(n, 1000, spacing=spacing) == _diffusers(n, spacing), n
    for n in (1, 7, 50, 500):
        assert ddim_timesteps(n, 500, spacing=spacing) == _diffusers(n, spacing, T=500), n
    assert ddim_timesteps(50, spacing=spacing) == _diffusers(50, spacing, cls=DDPMScheduler)


def test_trailing_overshoot_point_is_dropped():
    # diffusers' own trailing grid for 61 steps ends with the non-timestep -1 (62 points)
    theirs = _diffusers(61, "trailing")
    assert len(theirs) == 62 and theirs[-1] == -1
    assert ddim_timesteps(61, spacing="trailing") == theirs[:-1]
    for n in range(1, 1001):
        grid = ddim_timesteps(n, spacing="trailing")
        assert len(grid) == n and grid[-1] >= 0 and grid[0] == 999, n
    with pytest.raises(UsageError, match="steps_offset"):
        ddim_timesteps(1000, steps_offset=1)


def test_leading_steps_offset_matches_diffusers():
    for n in (10, 50, 333):
        assert ddim_timesteps(n, steps_offset=1) == _diffusers(n, "leading", offset=1)


@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
def test_start_at_top_of_grid_is_the_full_grid(spacing):
    for n in range(1, 1001):
        full = ddim_timesteps(n, spacing=spacing)
        assert ddim_timesteps(n, start=full[0], spacing=spacing) == full, n


def test_difface_start_first_call_at_start():
    grid = ddim_timesteps(100, start=400)
    assert grid[0] == 400 and grid[1] == 390 and grid[-1] == 0
    assert grid == list(range(400, -1, -10))
    # 250 steps (stride 4): the official code would begin at 396; we begin at 400
    grid = ddim_timesteps(250, start=400)
    assert grid[:2] == [400, 396] and len(grid) == 101
    # on the grid, the run is the tail of the full grid
    full = ddim_timesteps(250)
    assert grid == full[full.index(400) :]


def test_start_replays_the_spacing():
    assert ddim_timesteps(100, start=405) == list(range(405, -1, -10))  # ends at 405 mod 10
    assert ddim_timesteps(10, start=950) == [950 - 100 * k for k in range(10)]  # above G[0]=900
    assert ddim_timesteps(10, start=400, spacing="trailing") == [400, 300, 200, 100, 0]
    assert ddim_timesteps(10, start=400, spacing="linspace") == [400, 289, 178, 67]
    for spacing in ("leading", "trailing", "linspace"):
        for n, start in [(7, 613), (50, 401), (333, 998), (1000, 17)]:
            full = ddim_timesteps(n, spacing=spacing)
            grid = ddim_timesteps(n, start=start, spacing=spacing)
            assert grid[0] == start and grid[-1] >= 0
            gaps = [a - b for a, b in zip(grid, grid[1:], strict=False)]
            full_gaps = [a - b for a, b in zip(full, full[1:], strict=False)]
            if spacing == "leading":
                assert set(gaps) <= {1000 // n}
            else:
                assert gaps == full_gaps[: len(gaps)]


def test_ddim_grid_rejects_bad_arguments():
    with pytest.raises(UsageError, match="spacing"):
        ddim_timesteps(10, spacing="even")
    with pytest.raises(UsageError, match="num_steps"):
        ddim_timesteps(1001)
    with pytest.raises(UsageError, match="num_steps"):
        ddim_timesteps(0)
    with pytest.raises(UsageError, match="start"):
        ddim_timesteps(10, start=1000)


def test_respacing_known_results():
    # "100": stride 999/99 = 111/11, so k -> round(111 k / 11): 6 -> 60.5.. -> 61
    grid = respaced_timesteps("100")
    assert len(grid) == 100 and grid[0] == 999 and grid[-1] == 0
    assert grid[::-1][:12] == [0, 10, 20, 30, 40, 50, 61, 71, 81, 91, 101, 111]
    assert respaced_timesteps(100) == grid == respaced_timesteps([100])
    # "ddimN": smallest integer stride with exactly N points
    assert respaced_timesteps("ddim50") == list(range(980, -1, -20))
    assert respaced_timesteps("ddim25") == list(range(960, -1, -40))
    assert respaced_timesteps("ddim3") == [668, 334, 0]  # stride 334 is the smallest giving 3
    assert respaced_timesteps("ddim1000") == list(range(999, -1, -1))
    # guided-diffusion's docstring example: 300 steps, sections of 100 with 10, 15, 20 steps
    grid = respaced_timesteps([10, 15, 20], 300)[::-1]
    assert grid[:10] == list(range(0, 100, 11))
    # section 2: stride 99/14; k=7 is the tie 49.5, the accumulated float sum lands just below
    assert grid[10:25] == [
        100,
        107,
        114,
        121,
        128,
        135,
        142,
        149,
        157,
        164,
        171,
        178,
        185,
        192,
        199,
    ]
    assert grid[25:29] == [200, 205, 210, 216] and grid[-1] == 299 and len(grid) == 45
    assert respaced_timesteps("10,15,20", 300) == respaced_timesteps([10, 15, 20], 300)
    assert respaced_timesteps("") == list(range(999, -1, -1))
    # the first T % len sections are one step longer: 1000 = 334 + 333 + 333
    assert respaced_timesteps("2,2,2")[::-1] == [0, 333, 334, 666, 667, 999]


def test_respacing_properties():
    for counts in ([250], [27], [5, 0, 9], [1, 1, 1, 1], [100, 50, 25, 10]):
        grid = respaced_timesteps(counts)
        assert grid == sorted(set(grid), reverse=True)
        assert len(grid) == sum(counts)
        assert all(0 <= t < 1000 for t in grid)
        size = 1000 // len(counts)
        if 1000 % len(counts) == 0:
            for i, c in enumerate(counts):
                inside = [t for t in grid if i * size <= t < (i + 1) * size]
                assert len(inside) == c
                if c >= 1:
                    assert i * size in inside
                if c >= 2:
                    assert (i + 1) * size - 1 in inside


def test_respacing_rejects_bad_input():
    with pytest.raises(UsageError, match="cannot divide"):
        respaced_timesteps([600, 600])
    with pytest.raises(UsageError, match="integer stride"):
        respaced_timesteps("ddim1")
    with pytest.raises(UsageError, match="ddimN"):
        respaced_timesteps("ddimx")
    with pytest.raises(UsageError, match="keeps no timestep"):
        respaced_timesteps([0])
    with pytest.raises(UsageError):
        respaced_timesteps("ten")


def test_jump_grid():
    assert jump_timesteps(100) == [999, 899, 799, 699, 599, 499, 399, 299, 199, 99]
    assert jump_timesteps(300) == [999, 699, 399, 99]
    assert jump_timesteps(1) == list(range(999, -1, -1))
    assert jump_timesteps(1000) == [999]
    assert jump_timesteps(50)[-1] == 999 % 50
    with pytest.raises(UsageError):
        jump_timesteps(0)


def test_window_is_half_open():
    window = (700, 1000)
    assert not window_contains(window, 700)
    assert window_contains(window, 701)
    assert window_contains(window, 999)
    assert window_contains((0.7 * 1000, 1000.0), 999)
    assert not window_contains((0, 999), 0) and window_contains((0, 999), 999)
    assert window_contains(None, 3)
    assert (
        sum(window_contains((0, 500), t) + window_contains((500, 1000), t) for t in range(1000))
        == 999
    )
    with pytest.raises(UsageError):
        window_contains((10, 5), 7)


def test_pairs_checks_and_alpha_bar():
    assert step_pairs([30, 20, 0]) == [(30, 20), (20, 0), (0, -1)]
    assert check_timesteps([5, 3, 0], 10) == [5, 3, 0]
    for bad in ([], [3, 3], [3, 5], [10, 2], [2, -1]):
        with pytest.raises(UsageError):
            check_timesteps(bad, 10)
    acp = torch.tensor([0.9, 0.5, 0.1], dtype=torch.float64)
    assert alpha_bar_at(acp, 1) == 0.5
    assert alpha_bar_at(acp, -1) == 1.0
    assert alpha_bar_at(acp, -1, final_alpha_cumprod=float(acp[0])) == 0.9
