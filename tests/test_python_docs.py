"""docs/python.md runs as written: every ```python block, in order, in one namespace, from the
repository's root (blocks starting ``# not run`` need a download and are skipped).

The page prints ``True`` where it claims something; a ``False`` anywhere in its output fails."""

from __future__ import annotations

import contextlib
import io
import re

from conftest import REPO

PAGE = REPO / "docs" / "python.md"


def blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", PAGE.read_text(encoding="utf-8"), re.S)


def test_every_python_block_runs_and_every_claim_holds(monkeypatch):
    monkeypatch.chdir(REPO)
    namespace: dict = {"__name__": "docs_python"}
    ran = 0
    for index, code in enumerate(blocks()):
        if code.startswith("# not run"):
            continue
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            exec(compile(code, f"docs/python.md block {index}", "exec"), namespace)  # noqa: S102
        printed = out.getvalue()
        assert not re.search(r"\bFalse\b", printed), f"block {index} printed:\n{printed}"
        ran += 1
    assert ran >= 10, f"only {ran} blocks ran"


def test_the_page_lists_every_public_name():
    import guidestack

    text = PAGE.read_text(encoding="utf-8")
    missing = [name for name in guidestack.__all__ if f"`{name}" not in text]
    assert not missing, f"docs/python.md does not mention {missing}"
