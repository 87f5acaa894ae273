"""Comparison pictures: sizes, gaps, masks shown in gray, and labels that are really drawn."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from guidestack.io.outputs import save_pil
from guidestack.io.pictures import GAP, compare_grid, make_grid, trajectory_strip

WHITE = (255, 255, 255)


def image(h: int, w: int, value: float = 0.0) -> torch.Tensor:
    return torch.full((3, h, w), value)


def as_array(picture: Image.Image) -> np.ndarray:
    assert picture.mode == "RGB"
    return np.asarray(picture).astype(int)


def test_compare_grid_size_gap_and_mask_colours():
    mask = torch.zeros(1, 32, 32)
    mask[:, :16] = 1  # top half missing
    panels = [("input", image(16, 24, -1.0)), ("mask", mask)]
    plain = compare_grid([("", x) for _, x in panels])
    # Heights follow the tallest panel (32): the input becomes 48 x 32.
    assert plain.size == (48 + GAP + 32, 32)
    a = as_array(plain)
    assert (a[:, :48] == 0).all()  # the black input, enlarged
    assert (a[:, 48 : 48 + GAP] == 255).all()  # the gap is background
    assert (a[:16, 52:] == 255).all() and (a[16:, 52:] == 0).all()  # white = missing


def test_labels_are_drawn_above_each_panel():
    panels = [("input", image(32, 32, -1.0)), ("result", image(32, 32, 1.0))]
    plain = as_array(compare_grid([("", x) for _, x in panels]))
    labelled_picture = compare_grid(panels)
    labelled = as_array(labelled_picture)
    strip = labelled.shape[0] - 32
    assert 6 <= strip <= 24
    assert labelled_picture.size == (32 + GAP + 32, 32 + strip)
    np.testing.assert_array_equal(labelled[strip:], plain)  # the panels are untouched
    for x0 in (0, 32 + GAP):
        text = labelled[:strip, x0 : x0 + 32]
        assert (text < 128).any(), "no label drawn"
    other = as_array(compare_grid([("output", panels[0][1]), ("result", panels[1][1])]))
    assert (other[:strip, :32] != labelled[:strip, :32]).any()  # the text itself shows
    np.testing.assert_array_equal(other[:strip, 32:], labelled[:strip, 32:])


def test_compare_grid_explicit_height_and_long_labels():
    picture = compare_grid([("a very long label that cannot fit", image(64, 64))], height=16)
    assert picture.width == 16
    assert picture.height > 16


def test_trajectory_strip_picks_evenly_spaced_frames():
    frames = [
        (t, image(16, 16, v))
        for t, v in zip([999, 750, 500, 250, 0], np.linspace(-1, 1, 5), strict=True)
    ]
    strip = trajectory_strip(frames, count=3, height=32)
    assert strip.size == (3 * 32 + 2 * GAP, strip.height)
    a = as_array(strip)
    bottom = a[-1]
    # Frames 999, 500 and 0 (values -1, 0, 1 -> 0, 128, 255) in that order.
    assert bottom[0, 0] == 0 and bottom[32 + GAP, 0] == 128 and bottom[-1, 0] == 255
    reference = as_array(
        compare_grid([(f"t={t}", x) for t, x in (frames[0], frames[2], frames[4])], height=32)
    )
    np.testing.assert_array_equal(a, reference)
    relabelled = as_array(
        compare_grid([(f"t={t + 1}", x) for t, x in (frames[0], frames[2], frames[4])], height=32)
    )
    assert (relabelled != a).any()
    assert trajectory_strip(frames).width == 5 * 16 + 4 * GAP


def test_make_grid_layout_with_labels_and_blank_cells():
    rows = [[image(16, 16, -1.0), None], [image(16, 16, -1.0), image(16, 32, -1.0)]]
    grid = make_grid(
        rows, row_labels=["pgdiff", "difface"], col_labels=["input", "output"], height=16
    )
    bare = make_grid(rows)
    assert bare.size == (16 + GAP + 32, 16 + GAP + 16)
    a = as_array(grid)
    label_w = grid.width - bare.width
    strip = grid.height - bare.height
    assert label_w > GAP and strip > 0
    np.testing.assert_array_equal(a[strip:, label_w:], as_array(bare))
    assert (a[strip:, : label_w - GAP] < 128).any()  # row labels drawn
    assert (a[:strip, label_w:] < 128).any()  # column labels drawn
    # The missing cell is background; the narrower cell is centred in its 32-wide column.
    assert (as_array(bare)[:16, 16 + GAP :] == 255).all()
    top_left = as_array(make_grid([[image(16, 16, -1.0)], [image(16, 32, -1.0)]]))
    assert (top_left[:16, :8] == 255).all() and (top_left[:16, 8:24] == 0).all()


def test_pictures_reject_bad_input():
    with pytest.raises(ValueError):
        compare_grid([])
    with pytest.raises(ValueError):
        make_grid([[image(8, 8)]], row_labels=["a", "b"])
    with pytest.raises(ValueError):
        compare_grid([("two channels", torch.zeros(2, 8, 8))])


def test_pictures_are_saved_as_png(tmp_path):
    picture = compare_grid([("x", image(8, 8, 0.5)), ("y", torch.ones(1, 8, 8))])
    save_pil(picture, tmp_path / "compare.png")
    with Image.open(tmp_path / "compare.png") as back:
        np.testing.assert_array_equal(np.asarray(back), np.asarray(picture))
