"""Starting the UI: one temporary folder for everything, set up before Gradio is imported.

Gradio reads ``GRADIO_TEMP_DIR`` when its modules are imported, so the folder is created and the
variable set here first; the app module (which imports Gradio) is imported afterwards.
"""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
from pathlib import Path
from typing import Any

LOOPBACK = ("127.0.0.1", "localhost", "::1")


def serve(host: str = "127.0.0.1", port: int | None = None) -> None:
    """Start the UI (blocking).  Uploads and outputs live in one temporary folder, removed at exit."""
    root = Path(tempfile.mkdtemp(prefix="guidestack-ui-"))
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
    os.environ["GRADIO_TEMP_DIR"] = str(root / "gradio")
    previous = signal.signal(signal.SIGTERM, _interrupt)  # so the folder is removed on SIGTERM too
    demo = None
    try:
        import gradio as gr

        from guidestack.api import registry as default_registry

        from .app import MAX_FILE_SIZE, THEME_FONTS, App, build

        demo = build(App(default_registry(), root))
        demo.queue(default_concurrency_limit=1, max_size=16)
        where = "loopback only" if host in LOOPBACK else "ALL interfaces given by --host"
        shown = f"[{host}]" if ":" in host else host
        print(
            f"guidestack ui: serving on http://{shown}:{port or 7860} ({where}); Ctrl+C stops",
            flush=True,
        )
        demo.launch(
            server_name=host,
            server_port=port,
            max_file_size=MAX_FILE_SIZE,
            theme=gr.themes.Default(font=THEME_FONTS, font_mono=["ui-monospace", "monospace"]),
            footer_links=[],
            ssr_mode=False,
            show_error=True,
            quiet=True,
        )
    except KeyboardInterrupt:
        pass
    finally:
        if demo is not None:
            demo.close()
        signal.signal(signal.SIGTERM, previous)
        shutil.rmtree(root, ignore_errors=True)


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt
