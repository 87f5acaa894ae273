"""``guidestack ui``: the browser UI, contributed by the built-in plugin like any command."""

from __future__ import annotations

import argparse
from importlib.util import find_spec

from guidestack import Registry, UsageError

DESCRIPTION = "browser UI (needs the ui extra: pip install 'guidestack[ui]')"


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback only)")
    p.add_argument("--port", type=int, default=None, help="port (default: 7860 or the next free)")


def run(args: argparse.Namespace, registry: Registry) -> int:
    """Start the UI (blocking) once its optional dependencies are known to be installed."""
    missing = [m for m in ("gradio", "tomli_w") if find_spec(m) is None]
    if missing:  # gradio is an optional extra; nothing imports it before this point
        raise UsageError(
            f"`guidestack ui` needs the optional UI dependencies ({', '.join(missing)} missing): "
            "pip install 'guidestack[ui]'"
        )
    from .server import serve

    serve(args.host, args.port)
    return 0
