"""One guidestack process of the multi-process tests: ``guidestack`` with a test stage added.

``test-pace`` changes nothing in the computation: it waits ``delay`` seconds at every step (so a
test can kill a process mid-run) and fails on the input named ``fail`` (so a test sees one input
fail while the others go on).  Run as ``python tests/dist_worker.py run RECIPE ...``, directly or
by ``torch.distributed.run``.
"""

from __future__ import annotations

import sys
import time

import guidestack as gs


class PaceOptions(gs.StageOptions):
    delay: float = 0.0
    fail: str = ""


class Pace(gs.Stage):
    name = "test-pace"
    description = "waits at every step; fails on one input"
    Options = PaceOptions

    @gs.hookimpl
    def transform_x0(self, ctx, state):
        time.sleep(self.options.delay)
        if self.options.fail in [m.get("name") for m in ctx.observation.meta]:
            raise RuntimeError(f"told to fail on {self.options.fail}")


RECIPE = """description = "restore at a set pace, failing on one input (tests)"
extends = "restore"

[[stage]]
use = "smooth-semantics"
weight = 1.0
restorer = {{ use = "gaussian-blur", sigma = 1.5 }}

[[stage]]
use = "test-pace"
delay = {delay}
fail = "{fail}"
"""


def recipe(folder, delay: float = 0.0, fail: str = "") -> str:
    """A paced restore recipe file in ``folder``."""
    path = folder / "paced.toml"
    path.write_text(RECIPE.format(delay=delay, fail=fail))
    return str(path)


if __name__ == "__main__":
    gs.register(Pace)
    from guidestack.cli.main import main

    raise SystemExit(main(sys.argv[1:]))
