"""The Gradio app: a Restore view and a Compose view over one editable recipe per session.

Every action goes through :mod:`guidestack.plugins.ui.session`; this module only lays out
widgets.  Stage option controls are generated from each stage's pydantic ``Options`` model, so a
third-party stage gets its controls without UI code.
"""

from __future__ import annotations

import copy
import os
import queue
import shutil
import threading
import time
from pathlib import Path
from typing import Any

import gradio as gr
import numpy as np
from PIL import Image

from guidestack import GuidestackError, Registry, api
from guidestack.io.outputs import save_pil, tensor_to_pil, write_text

from . import session as S

MAX_FILE_SIZE = "20mb"
PREVIEW_EVERY = 0.25  # seconds between x0 previews sent to the browser
DEFAULT_RECIPE = "inpaint"
DEFAULT_PRIOR = "gaussian-faces-64"
THEME_FONTS = ["ui-sans-serif", "system-ui", "sans-serif"]  # no web fonts: works offline


class App:
    """Server-side state shared by all sessions: registry, loaded priors, the run lock."""

    def __init__(self, registry: Registry, root: Path):
        self.registry = registry
        self.priors = S.PriorCache(registry)
        self.root = root
        self.run_lock = threading.Lock()  # one run at a time (CPU); others wait in the queue
        self.cancels: dict[str, threading.Event] = {}
        self.recipes = sorted(r["name"] for r in api.list_recipes(registry=registry))
        self.prior_names = registry.names("prior")
        self.stage_names = registry.names("stage")

    def folder(self, request: gr.Request) -> Path:
        """This session's temporary folder: the only place the UI writes to."""
        path = self.root / f"session-{request.session_hash}"
        path.mkdir(parents=True, exist_ok=True)
        return path

    def forget(self, request: gr.Request) -> None:
        shutil.rmtree(self.root / f"session-{request.session_hash}", ignore_errors=True)
        self.cancels.pop(request.session_hash, None)

    def fresh(self, recipe: str, prior: str) -> tuple[dict, str]:
        """The recipe specialised for the prior (loading it tells its kind), plus any error."""
        if recipe not in self.recipes:  # a name from the list, never a path
            raise gr.Error(f"unknown recipe {recipe!r}")
        try:
            kind, error = self.priors.get(prior).kind, ""
        except GuidestackError as exc:
            kind, error = "", f"prior {prior!r} is unavailable: {exc}"
        return S.recipe_for_prior(recipe, self.registry, prior, kind), error

    def problems(self, raw: dict) -> str:
        found = S.problems_of(raw, self.registry)
        if not found:
            return "**Recipe is valid.**"
        return "**Recipe problems:**\n\n" + "\n".join(
            f"- `{p or '(recipe)'}`: {m}" for p, m in found
        )


# --- widgets for one options model ------------------------------------------------------------


def _widget(c: S.Control, value: Any, key: str):
    label = c.name
    info = c.help or None
    if c.kind == "bool":
        return gr.Checkbox(value=bool(value), label=label, info=info, key=key)
    if c.kind == "choice":
        return gr.Dropdown(choices=c.choices, value=value, label=label, info=info, key=key)
    if c.kind in ("int", "float") and not c.optional:
        return gr.Number(
            value=value,
            label=label,
            info=info,
            minimum=c.minimum,
            maximum=c.maximum,
            precision=0 if c.kind == "int" else None,
            step=1 if c.kind == "int" else 0.01,
            key=key,
        )
    if c.kind == "text":
        return gr.Textbox(value=value or "", label=label, info=info, key=key)
    text = S.toml_value(value)
    hint = (info or "") + " (TOML value; empty = default)"
    return gr.Textbox(value=text, label=label, info=hint, key=key)


def _convert(c: S.Control, value: Any) -> Any:
    if c.kind == "int" and not c.optional:
        return None if value is None else int(value)
    if c.kind == "float" and not c.optional:
        return None if value is None else float(value)
    if c.kind == "text":
        return value or None
    if c.kind in ("bool", "choice"):
        return value
    return S.parse_toml_value(value or "")


def options_panel(app: App, raw: dict, raw_state: gr.State, problems: gr.Markdown) -> None:
    """Controls for ``[sampler]``, ``[guidance]`` and each stage, bound to ``raw_state``."""
    from guidestack import GuidanceConfig, SamplerConfig

    sections: list[tuple[str | int, str, type]] = [
        ("sampler", "Sampler", SamplerConfig),
        ("guidance", "Guidance", GuidanceConfig),
    ]
    for i, entry in enumerate(raw.get("stage", [])):
        cls = app.registry.stage(str(entry.get("use")))
        if cls is not None:
            title = f"Stage {i}: {entry.get('id') or cls.name} — {cls.description}"
            sections.append((i, title, cls.Options))
    for section, title, model in sections:
        table = raw["stage"][section] if isinstance(section, int) else raw.get(section, {})
        with gr.Accordion(title, open=isinstance(section, int)):
            for c in S.controls_for(model):
                if section == "sampler" and c.name == "steps":
                    continue  # the "steps" box above edits it
                value = table.get(c.name, c.default)
                widget = _widget(c, value, key=f"opt-{section}-{table.get('use', '')}-{c.name}")

                def setter(raw_now, new, section=section, c=c):
                    raw_now = copy.deepcopy(raw_now)
                    try:
                        S.set_option(raw_now, section, c.name, _convert(c, new))
                    except (TypeError, ValueError):
                        S.set_option(raw_now, section, c.name, new)
                    return raw_now, app.problems(raw_now)

                widget.input(setter, [raw_state, widget], [raw_state, problems], queue=False)


# --- the Blocks -------------------------------------------------------------------------------


def build(app: App) -> gr.Blocks:
    face_defaults = S.faces_defaults(app.registry)
    with gr.Blocks(title="guidestack", analytics_enabled=False) as demo:
        raw_state = gr.State({})
        version = gr.Number(0, visible=False)
        gr.Markdown(
            "# guidestack\nRestore faces with composable diffusion guidance. "
            "Everything here is also `guidestack run` — download the recipe to re-run it."
        )
        with gr.Row():
            recipe_dd = gr.Dropdown(
                app.recipes,
                value=_default(app.recipes, DEFAULT_RECIPE),
                label="Recipe",
                elem_id="recipe",
            )
            prior_dd = gr.Dropdown(
                app.prior_names,
                value=_default(app.prior_names, DEFAULT_PRIOR),
                label="Prior",
                elem_id="prior",
            )
            seed = gr.Number(0, precision=0, label="Seed", elem_id="seed")
            steps = gr.Number(
                None, precision=0, minimum=1, maximum=10000, label="Steps", elem_id="steps"
            )
        problems = gr.Markdown(elem_id="problems")

        with gr.Tab("Restore", elem_id="tab-restore"):
            with gr.Row():
                image = gr.Image(
                    type="filepath",
                    label="Input image",
                    elem_id="input-image",
                    sources=["upload", "clipboard"],
                )
                mask_upload = gr.Image(
                    type="filepath",
                    image_mode="L",
                    label="Mask (white = missing)",
                    elem_id="mask-upload",
                    sources=["upload", "clipboard"],
                )
                reference = gr.Image(
                    type="filepath",
                    label="Reference (optional)",
                    elem_id="reference",
                    sources=["upload", "clipboard"],
                )
            with gr.Accordion("…or draw the mask on the input", open=False):
                editor = gr.ImageEditor(
                    type="numpy",
                    label="Paint the missing region",
                    sources=["upload"],
                    brush=gr.Brush(colors=["#ffffff"], color_mode="fixed"),
                    elem_id="mask-editor",
                )
            faces_box = gr.Accordion("Faces in the wild (as `guidestack run --faces`)", open=False)
            with faces_box, gr.Row():
                faces_on = gr.Checkbox(
                    False,
                    label="Detect, align and restore every face of the photo",
                    elem_id="faces",
                )
                min_face = gr.Number(
                    face_defaults["min_face"], label="Smallest face side (px)", minimum=1
                )
                threshold = gr.Number(
                    face_defaults["threshold"], label="Detector probability", minimum=0, maximum=1
                )
                upscale = gr.Number(1, precision=0, label="Upscale", minimum=1, maximum=8)
            with gr.Accordion("Options (generated from each stage's options model)", open=False):

                @gr.render(inputs=[raw_state], triggers=[version.change])
                def _opts(raw):
                    options_panel(app, raw, raw_state, problems)

            with gr.Row():
                run_btn = gr.Button("Restore", variant="primary", elem_id="run")
                cancel_btn = gr.Button("Cancel", variant="stop", elem_id="cancel")
            status = gr.Markdown(elem_id="status")
            with gr.Row():
                preview = gr.Image(
                    label="Current x0 prediction",
                    elem_id="preview",
                    interactive=False,
                    format="png",
                )
                slider = gr.ImageSlider(
                    label="Before / after", elem_id="compare", interactive=False, type="filepath"
                )
            with gr.Row():
                detected = gr.Image(
                    label="Detected faces", elem_id="detected", interactive=False, visible=False
                )
                gallery = gr.Gallery(
                    label="Restored faces", elem_id="faces-out", visible=False, columns=6
                )
            downloads = gr.File(
                label="Downloads", file_count="multiple", elem_id="downloads", interactive=False
            )

        with gr.Tab("Compose", elem_id="tab-compose"):
            gr.Markdown("Add, remove and reorder stages; problems above update as you edit.")
            with gr.Row():
                add_dd = gr.Dropdown(app.stage_names, label="Stage to add", elem_id="add-stage")
                add_btn = gr.Button("Add stage", elem_id="add-stage-btn")

            @gr.render(inputs=[raw_state], triggers=[version.change])
            def _stages(raw):
                for i, entry in enumerate(raw.get("stage", [])):
                    with gr.Row():
                        gr.Markdown(
                            f"**{i}. {entry.get('use')}**"
                            + (f" (id `{entry['id']}`)" if entry.get("id") else "")
                        )
                        for label, op in (("↑", -1), ("↓", 1), ("Remove", 0)):
                            btn = gr.Button(
                                label,
                                size="sm",
                                elem_id=f"stage-{i}-{'remove' if op == 0 else ('up' if op < 0 else 'down')}",
                            )

                            def act(raw_now, v, i=i, op=op):
                                raw_now = copy.deepcopy(raw_now)
                                if op == 0:
                                    S.remove_stage(raw_now, i)
                                else:
                                    S.move_stage(raw_now, i, op)
                                return raw_now, v + 1, app.problems(raw_now)

                            btn.click(act, [raw_state, version], [raw_state, version, problems])

            save_btn = gr.Button("Save recipe as TOML", elem_id="save-recipe")
            saved = gr.File(label="recipe.toml", elem_id="saved-recipe", interactive=False)

        # --- events ---
        def load_recipe(name, prior, v):
            raw, error = app.fresh(name, prior)
            shown = app.problems(raw) + (f"\n\n**{error}**" if error else "")
            return raw, v + 1, shown, raw.get("sampler", {}).get("steps")

        for trigger in (recipe_dd.change, prior_dd.change):
            trigger(
                load_recipe, [recipe_dd, prior_dd, version], [raw_state, version, problems, steps]
            )
        demo.load(
            load_recipe, [recipe_dd, prior_dd, version], [raw_state, version, problems, steps]
        )

        def set_steps(raw_now, n):
            raw_now = copy.deepcopy(raw_now)
            S.set_option(raw_now, "sampler", "steps", None if n is None else int(n))
            return raw_now, app.problems(raw_now)

        steps.input(set_steps, [raw_state, steps], [raw_state, problems], queue=False)

        def add(raw_now, use, v):
            if not use:
                return gr.skip(), gr.skip(), gr.skip()
            raw_now = copy.deepcopy(raw_now)
            S.add_stage(raw_now, use)
            return raw_now, v + 1, app.problems(raw_now)

        add_btn.click(add, [raw_state, add_dd, version], [raw_state, version, problems])

        def save(raw_now, request: gr.Request):
            path = app.folder(request) / "recipe.toml"
            return str(write_text(S.to_toml(raw_now, "saved by guidestack ui"), path))

        save_btn.click(save, [raw_state], [saved])

        def run(
            raw_now, seed_value, image_path, editor_value, mask_path, ref_path,
            faces_value, mf, th, up, request: gr.Request,
        ):  # fmt: skip
            wild = S.FacesOptions(mf, th, int(up or 1)) if faces_value else None
            yield from _run(
                app,
                raw_now,
                seed_value,
                image_path,
                editor_value,
                mask_path,
                ref_path,
                wild,
                request,
            )

        run_btn.click(
            run,
            [raw_state, seed, image, editor, mask_upload, reference]
            + [faces_on, min_face, threshold, upscale],
            [status, preview, slider, downloads, detected, gallery],
            concurrency_limit=1,
            concurrency_id="run",
        )

        def cancel(request: gr.Request):
            app.cancels.setdefault(request.session_hash, threading.Event()).set()
            return "Cancelling…"

        cancel_btn.click(cancel, None, [status], queue=False)
        image.change(lambda p: p, [image], [editor], queue=False)
        demo.unload(app.forget)
    return demo


def _default(names: list[str], wanted: str) -> str | None:
    return wanted if wanted in names else (names[0] if names else None)


def _drawn_mask(editor_value: Any) -> np.ndarray | None:
    """The union of painted layers (alpha > 0) as a uint8 mask, or None if nothing was drawn."""
    if not isinstance(editor_value, dict):
        return None
    painted = None
    for layer in editor_value.get("layers") or []:
        if layer is None:
            continue
        arr = np.asarray(layer)
        alpha = (
            arr[..., 3] > 0
            if arr.ndim == 3 and arr.shape[-1] == 4
            else arr.reshape(arr.shape[:2]) > 0
        )
        painted = alpha if painted is None else painted | alpha
    if painted is None or not painted.any():
        return None
    return painted.astype(np.uint8) * 255


def _run(app: App, raw, seed_value, image_path, editor_value, mask_path, ref_path, wild, request):
    steps = _run_steps(
        app, raw, seed_value, image_path, editor_value, mask_path, ref_path, wild, request
    )
    for update in steps:
        if isinstance(update[-1], S.RunOutcome):  # the last update: show the faces panels
            yield (*update[:-1], *_faces_panels(update[-1], wild))
        else:
            yield (*update, gr.skip(), gr.skip())


def _faces_panels(result: S.RunOutcome, wild) -> tuple:
    """Detected/restored faces, shown when a ``--faces`` run finishes (hidden otherwise)."""
    if wild is None:
        return gr.Image(visible=False), gr.Gallery(visible=False)
    return (
        gr.Image(value=str(result.detected), visible=True),
        gr.Gallery(value=[str(p) for p in result.faces], visible=True),
    )


def _run_steps(
    app: App, raw, seed_value, image_path, editor_value, mask_path, ref_path, wild, request
):
    skip = gr.skip()
    if not image_path:
        yield "Upload an input image first.", skip, skip, skip
        return
    folder = app.folder(request)
    run_dir = folder / f"run-{time.strftime('%Y%m%d-%H%M%S')}-{os.urandom(2).hex()}"
    run_dir.mkdir()
    name = S.safe_stem(Path(image_path).name)
    mask = Path(mask_path) if mask_path else None
    drawn = _drawn_mask(editor_value) if mask is None else None
    if drawn is not None:
        mask = run_dir / f"{name}_mask.png"
        save_pil(Image.fromarray(drawn, mode="L"), mask)
    files = S.RunFiles(Path(image_path), mask, Path(ref_path) if ref_path else None, name)
    cancel = app.cancels.setdefault(request.session_hash, threading.Event())
    cancel.clear()
    events: queue.Queue = queue.Queue()
    outcome: dict[str, Any] = {}

    def on_event(event: str, **info: Any) -> None:
        events.put((event, info))

    def work() -> None:
        try:
            with app.run_lock:
                outcome["ok"] = S.execute(
                    raw,
                    files,
                    int(seed_value or 0),
                    app.priors,
                    run_dir,
                    on_event=on_event,
                    cancel=cancel,
                    faces=wild,
                )
        except GuidestackError as exc:
            outcome["error"] = str(exc)
        except Exception as exc:  # noqa: BLE001 - shown to the user as one line
            outcome["error"] = f"unexpected {type(exc).__name__}: {exc}"
        finally:
            events.put(("done", {}))

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    total, done, last = 0, 0, 0.0
    yield "Starting…", None, None, None
    while True:
        event, info = events.get()
        if event == "done":
            break
        if event == "start":
            total = int(info.get("total", 0))
        elif event in ("step", "iteration"):
            done += 1
            state = info.get("state")
            now = time.monotonic()
            if (
                state is not None
                and getattr(state, "x0", None) is not None
                and now - last > PREVIEW_EVERY
            ):
                last = now
                img = tensor_to_pil(state.x0[0].detach().float().cpu())
                yield f"Step {done} / {total or '?'} (t = {info.get('t')})", img, skip, skip
    thread.join()
    if "error" in outcome:
        yield f"**Stopped:** {outcome['error']}", skip, skip, skip
        return
    result: S.RunOutcome = outcome["ok"]
    before = str(files.image)
    notes = "".join(f"\n\n*{w}*" for w in result.warnings)
    yield (
        f"**Done** ({done} steps). Re-run with the CLI: `{result.cli}`{notes}",
        str(result.output),
        (before, str(result.output)),
        [str(p) for p in result.files],
        result,
    )
