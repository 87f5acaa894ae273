"""PGDiff stages and restorers that run networks: identity (facenet), perceptual (LPIPS), and
the torch-module restorer.  No weights are downloaded: local files only, offline errors checked."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import shared
from PIL import Image

from guidestack.engine.context import Observation
from guidestack.engine.errors import InputError, RecipeError
from guidestack.engine.recipe import validate
from guidestack.engine.registry import load_registry
from guidestack.engine.run import run_recipe
from guidestack.plugins.priors.gaussian import load_shipped_prior

SIZE = 64


@pytest.fixture(scope="module")
def reg():
    return load_registry(blocked=set(), entry_points=False)


@pytest.fixture(scope="module")
def prior():
    return load_shipped_prior("gaussian-faces-64")


@pytest.fixture
def offline_cache(tmp_path, monkeypatch):
    """An empty torch cache and download URLs that refuse at once (no network in tests)."""
    from guidestack.plugins import networks

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(networks, "WEIGHTS_URL", "http://127.0.0.1:9/20180402-114759-vggface2.pt")
    monkeypatch.setattr(
        networks,
        "TORCHVISION_URLS",
        {k: f"http://127.0.0.1:9/{k}.pth" for k in networks.TORCHVISION_URLS},
    )
    return tmp_path / "torch"


def faces(n: int) -> torch.Tensor:
    from guidestack.io.images import read_image, to_square

    files = sorted(shared("faces", "hq").glob("*.png"))[:n]
    return torch.stack([to_square(read_image(f).tensor, SIZE)[0] for f in files])


def recipe(reg, stages, steps=6, deterministic=False, **guidance):
    raw = {
        "description": "t",
        "sampler": {"kind": "ddpm", "steps": steps, "deterministic": deterministic},
        "guidance": {"rule": "dynamic", "scale": 0.2, **guidance},
        "stage": stages,
    }
    return validate(raw, reg, "<test>")


# --- identity ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def random_facenet(tmp_path_factory):
    """A seeded, randomly initialised InceptionResnetV1 saved as a state dict (weights file).

    Fresh batch-norm statistics (mean 0, var 1) make every embedding nearly the same (cosine
    0.9999 between different faces), so they are re-estimated on faces first: the weights stay
    random, but embeddings of different faces differ (cosine 0.1 to 0.4).
    """
    import torch.nn.functional as F
    from facenet_pytorch.models.inception_resnet_v1 import InceptionResnetV1

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        net = InceptionResnetV1(pretrained=None)
    for m in net.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.momentum = None  # cumulative average over the calibration batch
            m.reset_running_stats()
    x = faces(4)
    with torch.no_grad():
        net.train()(F.interpolate(torch.cat([x, x.flip(-1)]), size=(96, 96), mode="bilinear"))
    net.eval()
    path = tmp_path_factory.mktemp("facenet") / "random-facenet.pt"
    torch.save(net.state_dict(), path)
    return path


def test_identity_offline_without_weights_says_how_to_get_them(reg, prior, offline_cache):
    obs = Observation(image=faces(1), reference=faces(1))
    with pytest.raises(InputError) as info:
        run_recipe(recipe(reg, [{"use": "identity"}]), prior, obs, [0], reg)
    msg = str(info.value)
    assert "20180402-114759-vggface2.pt" in msg and "weights =" in msg and str(offline_cache) in msg
    assert not list(offline_cache.rglob("*.part"))  # no half-written file left behind


def test_identity_needs_a_reference_and_an_existing_file(reg, prior, random_facenet, tmp_path):
    with pytest.raises(InputError, match="reference"):
        stage = {"use": "identity", "weights": str(random_facenet)}
        run_recipe(recipe(reg, [stage]), prior, Observation(image=faces(1)), [0], reg)
    obs = Observation(image=faces(1), reference=faces(1))
    with pytest.raises(InputError, match="does not exist"):
        run_recipe(
            recipe(reg, [{"use": "identity", "weights": str(tmp_path / "no.pt")}]),
            prior,
            obs,
            [0],
            reg,
        )
    torch.save({"conv.weight": torch.zeros(1)}, tmp_path / "other.pt")
    with pytest.raises(InputError, match="does not fit InceptionResnetV1"):
        run_recipe(
            recipe(reg, [{"use": "identity", "weights": str(tmp_path / "other.pt")}]),
            prior,
            obs,
            [0],
            reg,
        )


def test_identity_guidance_moves_the_embedding_towards_the_reference(reg, prior, random_facenet):
    """With a local weights file: the gradient reaches x0 and guided samples end closer (in the
    network's embedding) to the reference than unguided ones with the same seeds."""
    from guidestack.plugins.stages.identity import Identity

    x = faces(2)
    obs = Observation(image=x, reference=x.flip(0))  # each sample's reference is the other face
    options = {"use": "identity", "weights": str(random_facenet), "size": 96}
    for distance, weight in (("cosine", 10.0), ("mse", 25.0)):
        r = recipe(reg, [{**options, "distance": distance}], window=[-1, 400])
        stage = Identity(r.stages[0])
        assert stage.weight == weight  # paper / official defaults
    # scale 5: at 10 the eight large mean-shift steps overshoot the random network's minimum
    guided_recipe = recipe(reg, [options], steps=8, rule="mean_shift", scale=5.0)
    plain_recipe = recipe(reg, [options], steps=8, rule="mean_shift", scale=0.0)
    guided, ctx = run_recipe(guided_recipe, prior, obs, [0, 1], reg)
    plain, _ = run_recipe(plain_recipe, prior, obs, [0, 1], reg)
    assert ctx.model_calls == 8

    stage = Identity(guided_recipe.stages[0])
    from guidestack.engine.context import StepState

    stage.setup(ctx)
    x0 = plain.image.clone().requires_grad_(True)
    loss = stage.guidance_loss(ctx=ctx, state=StepState(t=0, t_prev=-1, index=0, x_t=x0, x0=x0))
    (grad,) = torch.autograd.grad(loss.sum(), x0)
    assert grad.flatten(1).norm(dim=1).min() > 0
    with torch.no_grad():
        state = StepState(t=0, t_prev=-1, index=0, x_t=guided.image, x0=guided.image)
        guided_loss = stage.guidance_loss(ctx=ctx, state=state)
    assert (guided_loss < loss.detach()).all(), (guided_loss, loss)


# --- perceptual ----------------------------------------------------------------------------------


def lpips_backbone():
    return shared("weights", "lpips_alexnet_backbone.pt")


def test_perceptual_backbone_file_reproduces_the_lpips_reference_values(reg, prior):
    from guidestack.plugins.networks import load_lpips

    model = load_lpips("alex", lpips_backbone(), torch.device("cpu"))

    def load(name):
        arr = np.asarray(
            Image.open(shared("lpips_examples", f"{name}.png")).convert("RGB"), dtype=np.float32
        )
        return torch.from_numpy(arr / 127.5 - 1).permute(2, 0, 1)[None]

    ref, p0, p1 = load("ex_ref"), load("ex_p0"), load("ex_p1")
    with torch.no_grad():
        assert float(model(ref, p0).mean()) == pytest.approx(0.7219, abs=1e-3)
        assert float(model(ref, p1).mean()) == pytest.approx(0.1376, abs=1e-3)


def test_perceptual_offline_without_backbone_says_how_to_get_it(reg, prior, offline_cache):
    obs = Observation(image=faces(1))
    with pytest.raises(InputError) as info:
        run_recipe(recipe(reg, [{"use": "perceptual"}]), prior, obs, [0], reg)
    msg = str(info.value)
    assert "alex.pth" in msg and "backbone =" in msg and str(offline_cache) in msg


def test_perceptual_accepts_a_torchvision_checkpoint_in_the_cache(reg, prior, offline_cache):
    """The torchvision file (``features.i`` keys) is found in the torch cache and converted."""
    from guidestack.plugins.networks import torchvision_cache_path

    state = torch.load(lpips_backbone(), weights_only=True)
    converted = {f"features.{k.split('.', 1)[1]}": v for k, v in state.items()}
    converted["classifier.1.weight"] = torch.zeros(2, 2)  # ignored
    path = torchvision_cache_path("alex")
    path.parent.mkdir(parents=True)
    torch.save(converted, path)
    obs = Observation(image=faces(1))
    _, ctx = run_recipe(recipe(reg, [{"use": "perceptual"}], steps=2), prior, obs, [0], reg)
    assert ctx.model_calls == 2


def test_perceptual_guidance_lowers_lpips_to_the_target(reg, prior):
    x = faces(2)
    obs = Observation(image=x, reference=x.flip(0))
    stage = {
        "use": "perceptual",
        "backbone": str(lpips_backbone()),
        "target": "reference",
        "weight": 1.0,
    }
    guided, ctx = run_recipe(recipe(reg, [stage], steps=10, scale=0.2), prior, obs, [0, 1], reg)
    plain, _ = run_recipe(recipe(reg, [stage], steps=10, scale=0.0), prior, obs, [0, 1], reg)
    from guidestack.plugins.networks import load_lpips

    model = load_lpips("alex", lpips_backbone(), torch.device("cpu"))
    with torch.no_grad():
        d_guided = model(guided.image, obs.reference).flatten(1).mean(1)
        d_plain = model(plain.image, obs.reference).flatten(1).mean(1)
    assert (d_guided < d_plain).all(), (d_guided, d_plain)
    with pytest.raises(RecipeError):
        recipe(reg, [{**stage, "net": "squeeze"}])


def test_network_stages_are_batch_invariant(reg, prior, random_facenet):
    x = faces(2)
    obs = Observation(image=x, reference=x.flip(0))
    stages = [
        {"use": "perceptual", "backbone": str(lpips_backbone())},
        {"use": "identity", "weights": str(random_facenet), "size": 80, "window": [-1, 300]},
    ]
    r = recipe(reg, stages, steps=4, deterministic=True)
    together, _ = run_recipe(r, prior, obs, [5, 6], reg)
    for i in range(2):
        alone, _ = run_recipe(r, prior, obs.select([i]), [5 + i], reg)
        assert torch.equal(alone.image[0], together.image[i]), i


# --- torch-module restorer ------------------------------------------------------------------

pytestmark = [
    pytest.mark.usefixtures("one_thread"),
    pytest.mark.filterwarnings("ignore:`torch.jit:FutureWarning"),
]


class Shrink(torch.nn.Module):
    def forward(self, y):
        return 0.5 * y


class TimeAware(torch.nn.Module):
    def forward(self, x_t, y, t):
        return 0.5 * (x_t + y) + 0.0 * t.float().view(-1, 1, 1, 1)


def test_torch_module_restorer_torchscript_and_state_dict(reg, prior, tmp_path):
    from guidestack.plugins.restorers.torch_module import ResidualCNN, TorchModuleRestorer

    y = faces(2)
    torch.jit.save(torch.jit.script(Shrink()), tmp_path / "shrink.pt")
    scripted = TorchModuleRestorer(TorchModuleRestorer.Options(path=str(tmp_path / "shrink.pt")))
    assert torch.allclose(scripted(y), 0.5 * y)
    zero_one = TorchModuleRestorer(
        TorchModuleRestorer.Options(path=str(tmp_path / "shrink.pt"), range="0,1", size=32)
    )
    assert zero_one(y).shape == y.shape and zero_one(y).max() <= 0.0 + 1e-6  # (y+1)/4*2-1 <= 0

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        net = ResidualCNN(width=8, depth=3).eval()
    torch.save(
        {"params_ema": {f"module.{k}": v for k, v in net.state_dict().items()}},
        tmp_path / "cnn.pth",
    )
    options = {
        "path": str(tmp_path / "cnn.pth"),
        "architecture": "residual-cnn",
        "arch_options": {"width": 8, "depth": 3},
        "key": "params_ema",
    }
    restorer = TorchModuleRestorer(TorchModuleRestorer.Options(**options))
    with torch.no_grad():
        assert torch.allclose(restorer(y), net(y).clamp(-1, 1), atol=1e-6)

    exported = torch.export.export(Shrink(), (y[:1],))
    torch.export.save(exported, tmp_path / "shrink.pt2")
    from_export = TorchModuleRestorer(
        TorchModuleRestorer.Options(path=str(tmp_path / "shrink.pt2"))
    )
    assert torch.allclose(from_export(y), 0.5 * y)

    with pytest.raises(InputError, match="does not fit"):
        TorchModuleRestorer(
            TorchModuleRestorer.Options(**{**options, "arch_options": {"width": 16, "depth": 3}})
        )
    with pytest.raises(InputError, match="TorchScript"):
        TorchModuleRestorer(TorchModuleRestorer.Options(path=str(tmp_path / "cnn.pth")))
    with pytest.raises(InputError, match="does not exist"):
        TorchModuleRestorer(TorchModuleRestorer.Options(path=str(tmp_path / "none.pt")))
    with pytest.raises(RecipeError, match="unknown architecture"):
        validate(
            {
                "description": "t",
                "stage": [
                    {
                        "use": "smooth-semantics",
                        "restorer": {"use": "torch-module", "path": "x", "architecture": "nope"},
                    }
                ],
            },
            reg,
            "<t>",
        )


@pytest.mark.parametrize("call,expected", [("y", 1), ("x_t,y,t", 12)])
def test_restorer_calls_once_unless_it_depends_on_t(reg, prior, tmp_path, call, expected):
    module = Shrink() if call == "y" else TimeAware()
    torch.jit.save(torch.jit.script(module), tmp_path / "net.pt")
    stage = {
        "use": "smooth-semantics",
        "restorer": {"use": "torch-module", "path": str(tmp_path / "net.pt"), "call": call},
    }
    _, ctx = run_recipe(
        recipe(reg, [stage], steps=12), prior, Observation(image=faces(1)), [0], reg
    )
    assert ctx.report["restorer_calls"] == {"smooth-semantics": expected}
    assert ctx.model_calls == 12
