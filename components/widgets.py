"""Shared Gradio pieces: inputs built from a method's ``Params`` dataclass, images, errors.

:func:`param_inputs` turns each dataclass field into a component from its ``spec`` metadata,
so a tab never lists its inputs by hand and its handler receives them **by name**
(``inputs_kwargs=`` the returned dict; the handler takes ``**values`` and calls
:func:`studio.core.params.coerce`).
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import logging
import math
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import gradio as gr
from PIL import Image

from studio import lazy
from studio.core.params import ParamError, choices_of, coerce, field_types
from studio.core.results import ImageResult, to_pil
from studio.core.sampling import Progress
from studio.errors import UserError
from components.warm import ensure_warm, is_warm

torch = lazy.load("torch")

log = logging.getLogger(__name__)

MAX_SLIDER_POSITIONS = 10_000  # wider integer ranges (seeds) get a number box, not a slider
MAX_ERROR_CHARS = 300
KEEP_RESULTS_SECONDS = 3600  # PNG folders older than this are removed at the next run


def param_inputs(cls, *, choices: Mapping[str, Sequence] | None = None,
                 labels: Mapping[str, Mapping[Any, str]] | None = None,
                 advanced_label: str = "Advanced", names: Sequence[str] | None = None,
                 id_prefix: str = "", boxes: dict | None = None) -> dict[str, gr.components.Component]:
    """One component per field of dataclass ``cls``, in field order; ``advanced`` ones in an Accordion,
    and the fields of each ``group`` (:func:`studio.core.params.spec`) in an Accordion of their own,
    after the plain fields (``boxes``, if given, receives ``{group: accordion}``, so a tab can show a
    method's box only while that method is chosen).

    ``choices[name]`` overrides a field's options (e.g. the models the manager holds);
    ``labels[name]`` maps option values to human labels (e.g. ``SCHEDULER_LABELS``);
    ``names`` limits the components to those fields (to lay a tab out in parts); element ids are
    ``f"{id_prefix}param-{name}"`` (a prefix per tab keeps them unique in the page).
    Call inside a Blocks/Column context. Returns ``{field name: component}``.
    """
    choices, labels = dict(choices or {}), dict(labels or {})
    fields = [f for f in dataclasses.fields(cls) if names is None or f.name in names]

    def make(f):
        return field_input(cls, f, choices.get(f.name), labels.get(f.name), id_prefix)

    out = {f.name: make(f) for f in fields if not f.metadata.get("advanced") and not f.metadata.get("group")}
    groups: dict[str, list] = {}
    for f in fields:
        if f.metadata.get("group"):
            groups.setdefault(f.metadata["group"], []).append(f)
    for group, members in groups.items():
        slug = "".join(ch if ch.isalnum() else "-" for ch in group.lower())
        with gr.Accordion(f"{group} settings", open=False, elem_id=f"{id_prefix}group-{slug}") as box:
            out.update({f.name: make(f) for f in members})
        if boxes is not None:
            boxes[group] = box
    advanced = [f for f in fields if f.metadata.get("advanced") and not f.metadata.get("group")]
    if advanced:
        with gr.Accordion(advanced_label, open=False):
            out.update({f.name: make(f) for f in advanced})
    return {f.name: out[f.name] for f in fields}


def field_input(cls, f: dataclasses.Field, options: Sequence | None = None,
                option_labels: Mapping[Any, str] | None = None, id_prefix: str = "") -> gr.components.Component:
    """The component for one field: choices -> Dropdown, bounded number -> Slider (or Number for
    very wide integer ranges), str -> Textbox, bool -> Checkbox."""
    m, tp = f.metadata, field_types(cls)[f.name]
    common = {"label": m.get("label", f.name), "info": m.get("help") or None, "elem_id": f"{id_prefix}param-{f.name}"}
    default = None if f.default is dataclasses.MISSING else f.default
    options = tuple(options) if options is not None else choices_of(cls, f)
    if options is not None:
        option_labels = option_labels or {}
        items = [(option_labels.get(o, str(o)), o) for o in options]
        value = default if default in options else (options[0] if options else None)
        return gr.Dropdown(choices=items, value=value, **common)
    if tp is bool:
        return gr.Checkbox(value=bool(default), **common)
    if tp in (int, float):
        lo, hi, step = m.get("minimum"), m.get("maximum"), m.get("step")
        precision = 0 if tp is int else None
        if lo is not None and hi is not None and (hi - lo) / (step or 1) <= MAX_SLIDER_POSITIONS:
            return gr.Slider(minimum=lo, maximum=hi, step=step or (1 if tp is int else None), value=default,
                             precision=precision, **common)
        return gr.Number(value=default, minimum=lo, maximum=hi, step=step or 1, precision=precision, **common)
    if tp is str:
        return gr.Textbox(value=default, max_length=m.get("max_chars"), **common)
    raise TypeError(f"no widget for field {f.name!r} of type {tp!r}")


def run_buttons(action: str, run_id: str, stop_id: str) -> tuple[gr.Button, gr.Button]:
    """A run button (wide, primary) and its Stop button, side by side."""
    with gr.Row():
        run_btn = gr.Button(action, variant="primary", scale=3, elem_id=run_id)
        stop_btn = gr.Button("Stop", variant="stop", scale=1, elem_id=stop_id)
    return run_btn, stop_btn


def run_panel(action: str, run_id: str, prefix: str = "",
              gallery_label: str = "Images (PNG with parameters)") -> tuple[gr.Button, gr.Button, gr.Image, gr.Gallery]:
    """The run / Stop buttons, the streaming preview and the PNG gallery every image tab shows;
    element ids ``run_id``, ``{prefix}stop-btn``, ``{prefix}preview``, ``{prefix}gallery``."""
    run_btn, stop_btn = run_buttons(action, run_id, f"{prefix}stop-btn")
    with gr.Row(equal_height=False):
        preview = gr.Image(label="Preview (predicted clean images while sampling)", type="pil",
                           interactive=False, height=320, elem_id=f"{prefix}preview")
        gallery = gr.Gallery(label=gallery_label, format="png", columns=2, height=320, object_fit="contain",
                             interactive=False, elem_id=f"{prefix}gallery")
    return run_btn, stop_btn, preview, gallery


# images --------------------------------------------------------------------------------------

def grid_image(images: torch.Tensor, size: int = 128, pad: int = 2) -> Image.Image:
    """(B, C, H, W) in [-1, 1] -> one RGB grid (near-square), each tile upscaled (nearest) to ~``size`` px."""
    tiles = [t.convert("RGB") for t in to_pil(images, max(1, size // images.shape[-1]))]
    cols = math.ceil(math.sqrt(len(tiles)))
    rows = math.ceil(len(tiles) / cols)
    w, h = tiles[0].size
    grid = Image.new("RGB", (cols * w + (cols - 1) * pad, rows * h + (rows - 1) * pad), "white")
    for i, tile in enumerate(tiles):
        grid.paste(tile, ((i % cols) * (w + pad), (i // cols) * (h + pad)))
    return grid


class PngFolder:
    """Result PNGs (and other result files) written under one temp folder (created on first use), one subfolder per run;
    Gradio serves the files byte for byte, so the download keeps the ``parameters`` chunk."""

    def __init__(self):
        self._root: Path | None = None
        self._lock = threading.Lock()

    def _run_dir(self) -> Path:
        with self._lock:
            if self._root is None:
                self._root = Path(tempfile.mkdtemp(prefix="diffusion-studio-"))
            self._prune()
            return Path(tempfile.mkdtemp(dir=self._root))

    def write_file(self, name: str, data: str | bytes) -> str:
        """One result file (e.g. a forecast CSV) in a fresh run folder; ``name`` is the studio's, never a user's."""
        path = self._run_dir() / name
        path.write_bytes(data.encode() if isinstance(data, str) else data)
        return str(path)

    def write(self, result: ImageResult) -> list[tuple[str, str]]:
        """(path, caption) per image, for a Gallery."""
        run_dir = self._run_dir()
        model = result.parameters.get("model", "image")
        out = []
        seeds = result.seeds or [None] * len(result.images)
        unique = len(set(seeds)) == len(seeds) and None not in seeds
        for i, seed in enumerate(seeds):
            name = f"{model}-seed{seed}" if unique else f"{model}-{i:02d}" + (f"-seed{seed}" if seed is not None else "")
            path = run_dir / f"{name}.png"
            path.write_bytes(result.png(i))
            out.append((str(path), result.caption(i)))
        return out

    def _prune(self) -> None:
        cutoff = time.time() - KEEP_RESULTS_SECONDS
        for d in self._root.iterdir():
            if d.is_dir() and d.stat().st_mtime < cutoff:
                shutil.rmtree(d, ignore_errors=True)


# drawings ------------------------------------------------------------------------------------

CANVAS = (256, 256)


def drawing_input(id_prefix: str, label: str) -> tuple[gr.Sketchpad, gr.File]:
    """A canvas to draw a digit on and an image upload (element ids ``{id_prefix}sketch``,
    ``{id_prefix}upload``); read them with :func:`read_upload` and :func:`canvas_or_upload`."""
    from studio.data.drawings import MAX_BYTES

    sketch = gr.Sketchpad(label=label, type="numpy", image_mode="RGBA", canvas_size=CANVAS, height=300,
                          layers=False, transforms=(), placeholder="Pick the brush (left), then draw",
                          brush=gr.Brush(colors=["#000000"], default_size=20), elem_id=f"{id_prefix}sketch")
    upload = gr.File(label=f"...or upload an image (any size, up to {MAX_BYTES // 2**20} MB)",
                     file_types=["image"], type="filepath", height=90, elem_id=f"{id_prefix}upload")
    return sketch, upload


def has_ink(sketch) -> bool:
    """Whether a Sketchpad value (dict with a 'composite' RGBA array) has a digit drawn on it."""
    from studio.data.drawings import DrawingError, to_digit

    comp = (sketch or {}).get("composite") if isinstance(sketch, dict) else None
    if comp is None:
        return False
    try:
        to_digit(comp)
    except DrawingError:
        return False
    return True


def read_upload(path) -> tuple[Image.Image | None, str]:
    """An uploaded image file -> (the image, what reading it as a digit did), checked now (size,
    format, ink) so a bad upload is refused at once; None and "" for a cleared upload."""
    from studio.data.drawings import MAX_BYTES, open_image, to_digit

    if not path:
        return None, ""
    size = Path(path).stat().st_size
    if size > MAX_BYTES:
        raise ParamError(f"the file is {size / 2**20:.1f} MB; the limit is {MAX_BYTES // 2**20} MB")
    image, _ = open_image(Path(path).read_bytes())
    _, notes = to_digit(image)
    return image, "Upload read: " + ("; ".join(notes) if notes else "already a 16 x 16 digit")


def canvas_or_upload(sketch_value, uploaded):
    """The drawing to use: the canvas when something is drawn on it, else the upload (or None)."""
    return sketch_value["composite"] if has_ink(sketch_value) else uploaded


# errors --------------------------------------------------------------------------------------

def user_message(exc: BaseException) -> str:
    """A short message for the UI: the text of a :class:`~studio.errors.UserError` as it is, else
    'Type: text', truncated either way."""
    text = str(exc) if isinstance(exc, UserError) else f"{type(exc).__name__}: {exc}"
    return text if len(text) <= MAX_ERROR_CHARS else text[: MAX_ERROR_CHARS - 3] + "..."


WARMING_UP = ("The studio is still loading torch and diffusers (once, in the first seconds after it starts); "
              "your request runs as soon as they are in.")


def wait_for_warm_up() -> None:
    """Wait for the app's warm-up imports (:func:`~components.warm.ensure_warm`); a request that comes
    before they are done says so in a notice instead of sitting silent."""
    if not is_warm():
        gr.Info(WARMING_UP, duration=8)
    ensure_warm()


def shows_errors(fn: Callable) -> Callable:
    """Wrap an event handler (function or generator) so every failure reaches the user as a
    ``gr.Error`` with a short message; unexpected ones are also logged with their traceback.
    The handler first waits for the app's warm-up imports (:func:`wait_for_warm_up`), so no request
    imports diffusers while another thread is half-way through it."""

    def convert(exc: Exception) -> gr.Error:
        if not isinstance(exc, UserError):
            log.exception("%s failed", fn.__name__)
        return gr.Error(user_message(exc), print_exception=False)

    if inspect.isgeneratorfunction(fn):
        @functools.wraps(fn)
        def gen_wrapper(*args, **kwargs):
            try:
                wait_for_warm_up()
                yield from fn(*args, **kwargs)
            except gr.Error:
                raise
            except Exception as exc:
                raise convert(exc) from exc
        return gen_wrapper

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            wait_for_warm_up()
            return fn(*args, **kwargs)
        except gr.Error:
            raise
        except Exception as exc:
            raise convert(exc) from exc
    return wrapper


# streaming a method's run ------------------------------------------------------------------------

def stream(run: Callable, params_cls: type, manager, *, preview: gr.components.Component,
           first: gr.components.Component, done: Callable[[Any, Any], dict],
           on_preview: Callable[[Progress, Any], dict] | None = None, desc: str = "Sampling",
           loading: str = "Loading model") -> Callable:
    """The one event handler for a tab that streams a method's ``run(p, manager)`` generator.

    It builds ``params_cls`` from the inputs by name (:func:`~studio.core.params.coerce`), yields
    ``{first: ""}`` before any model work (Gradio registers a generator for cancellation only after
    its first item; a run cancelled before that would keep its model lease), moves the progress bar
    on every :class:`~studio.core.sampling.Progress`, shows each preview grid in ``preview`` (plus
    what ``on_preview(item, params)`` adds), and finally yields ``done(result, params)``: a dict
    from output components to values. Errors reach the user through :func:`shows_errors`.

    Wire it with ``inputs_kwargs=`` the tab's Params inputs and ``preprocess=False``, so that raw
    values reach ``coerce`` and out-of-range ones get the studio's messages, which name the input.
    """

    @shows_errors
    def handler(progress=gr.Progress(), **values):
        params = coerce(params_cls, values)
        yield {first: ""}
        progress((0, getattr(params, "steps", 1)), desc=loading)
        for item in run(params, manager):
            if isinstance(item, Progress):
                progress((item.step, item.total), desc=desc, unit="steps")
                if item.preview is not None:
                    yield {preview: grid_image(item.preview), **(on_preview(item, params) if on_preview else {})}
                continue
            yield done(item, params)

    handler.__name__ = f"{getattr(run, '__module__', 'run').rsplit('.', 1)[-1]}_stream"
    return handler
