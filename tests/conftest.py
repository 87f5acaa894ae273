"""Shared fixtures: paths to the shared test data, the registry, small priors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
EXAMPLES = REPO / "examples" / "faces"
#: what the CLI's listing commands (--help, recipes, plugins, validate) must never import
HEAVY_MODULES = (
    "torch",
    "torchvision",
    "diffusers",
    "kornia",
    "gradio",
    "lpips",
    "facenet_pytorch",
    "spandrel",
)
#: ``python -c LIGHT_CLI_SCRIPT '<json list of argument lists>'`` runs the CLI's ``main`` on each
#: in one process and prints ``{"args": [exit code, [heavy modules imported by then]]}``
LIGHT_CLI_SCRIPT = f"""
import contextlib, io, json, sys
from guidestack.cli.main import main
out = {{}}
for args in json.loads(sys.argv[1]):
    with contextlib.redirect_stdout(io.StringIO()):
        try:
            code = main(args)
        except SystemExit as exc:  # --help
            code = exc.code
    out[" ".join(args)] = [code, [m for m in {HEAVY_MODULES!r} if m in sys.modules]]
print(json.dumps(out))
"""

# The tests use tiny tensors, for which one thread is faster than two (and much faster when the
# machine is busy); CLI subprocesses keep torch's default.
torch.set_num_threads(1)


def shared(*parts: str) -> Path:
    """A file in ../shared/data; the test is skipped with a clear reason if the data is absent."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"shared test data not found: {path}")
    return path


@pytest.fixture(scope="session")
def registry():
    from guidestack.engine.registry import load_registry

    return load_registry(blocked=set(), entry_points=False)


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    yield


@pytest.fixture
def one_thread():
    """One torch thread for the test (``pytestmark = pytest.mark.usefixtures("one_thread")``):
    loops of many tiny tensor ops are fastest so, and on a busy 2-core CI machine two threads
    per process cost 10x (measured); batch and parity numbers are measured so too."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _needs_shared_data(item: pytest.Item) -> bool:
    """Whether the test (or one of its fixtures) reads ../shared/data through :func:`shared`."""
    import inspect

    functions = [getattr(item, "function", None)]
    info = getattr(item, "_fixtureinfo", None)
    for defs in info.name2fixturedefs.values() if info else ():
        functions += [d.func for d in defs]
    for fn in functions:
        try:
            if fn is not None and "shared(" in inspect.getsource(fn):
                return True
        except (OSError, TypeError):
            continue
    return False


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Without ../shared/data, say so once, before the tests run, with how many it skips."""
    if SHARED_DATA.exists():
        return
    needing = [item for item in items if _needs_shared_data(item)]
    reason = f"shared test data not found: {SHARED_DATA}"
    for item in needing:
        item.add_marker(pytest.mark.skip(reason=reason))
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write_line(
            f"NOTE: {SHARED_DATA} is missing: {len(needing)} of {len(items)} tests need it and "
            "are skipped (the face images and weights of ../shared/data; see its PROVENANCE.md)",
            yellow=True,
            bold=True,
        )
