"""A browser UI (Gradio) over the public engine API; installed with ``guidestack[ui]``.

Everything the UI runs goes through :mod:`guidestack.plugins.ui.session`, which only calls the
engine functions the CLI calls, so a recipe saved from the UI re-runs identically with
``guidestack run``.
"""
