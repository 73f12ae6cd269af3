"""Tune tab: tune a few-step model towards a handful of target images by one of several methods
(PSO, the plain losses, R0, Diffusion-DRO; on LoRA, SaRA or all weights), watch it train, compare.

Targets are a bundled style set (the 16 thickest or thinnest real digits, or the 15 thickest of
digits 0-4, which leaves 5-9 to measure forgetting on) or the user's own drawings and uploads
(2 to 16, all showing one digit). Each method's own settings sit in a box shown while it is chosen. Train starts a run in a background thread
(one run at a time for the whole app; anyone else who presses Train is told who is training and
how far it got, and every open page shows the run's progress): a live loss plot, and every N
steps a fixed-seed validation grid at 1, 2 and 4 steps. Stop ends the run early and keeps the
adapter trained so far. At the end the tuned model is registered as ``<base>-tuned`` (usable in
the Generate tab at once), the before / after grid is shown, and Save stores the adapter as a
named model (safetensors) that later sessions find again. Every finished run is measured (style
rate by an independent style judge, judge accuracy, FD-digits drift to the untuned model,
forgetting on the digits the targets leave out, trainable parameters, optimizer memory, seconds)
and added to this page's comparison table, which downloads as CSV.
"""

from __future__ import annotations

from pathlib import Path

import csv
import io

import gradio as gr
import numpy as np

from studio import lazy
from studio.core.manager import ModelManager
from studio.core.params import ParamError, coerce
from studio.core.results import png_bytes, to_grid
from studio.data.digits import style_set
from studio.data.drawings import MAX_BYTES, DrawingError, open_image, to_digit
from studio.methods import tune
from studio.plots import loss_chart
from components import jobs
from components.widgets import PngFolder, param_inputs, shows_errors

torch = lazy.load("torch")

TILE = 48  # pixels per digit in the grids
STYLE_LABELS = {"thick": "thick strokes (16 real digits)", "thin": "thin strokes (16 real digits)",
                "thick-0-4": "thick strokes, digits 0-4 only (15 real digits; forgetting measured on 5-9)",
                "custom": "my drawings / uploads"}
LOSS_LABELS = {"dpo": "PSO, DPO form (reference: the untuned model)",
               "hinge": "PSO, hinge form (released scripts; they use beta 5)",
               "plain-distilled": "plain diffusion loss at the distilled timesteps + prior (fair baseline)",
               "plain": "plain diffusion loss, uniform timesteps, no prior (DreamBooth's; confounded)",
               "r0": "R0: rewards only (digit log-prob + soft thickness), regularised",
               "dro": "Diffusion-DRO: targets ranked above the model's own samples"}
WEIGHTS_LABELS = {"lora": "LoRA adapter", "sara": "SaRA: the smallest-magnitude weights (sparse)",
                  "full": "all weights (full fine-tuning)"}
TABLE_COLUMNS = ["run", "loss", "weights", "steps", "style rate", "judge accuracy", "drift FD-digits",
                 "forgetting: accuracy change", "forgetting: FD-digits", "trainable", "optimizer MB", "seconds"]
METHODS_ABOUT = (
    "**The other methods.** *Weights*: **SaRA** trains the smallest-magnitude share of every weight tensor "
    "(sparse: only those entries have optimizer state), with a nuclear-norm penalty and a re-selection halfway; "
    "deviations from its release (per-tensor threshold, the sign of small weights kept, the penalty's gradient "
    "reaching the update) are in `docs/tune.md`. *Losses*: **R0** maximises rewards on the student's own samples "
    "(the asked digit's log-probability under Guide's classifier, not the judge, plus a soft stroke thickness) "
    "with weight regularisation, random-eta sampling and normalised reward gradients; it has no official code, so "
    "this is a reconstruction. Switch its regularisers off to watch it hack the reward. **Diffusion-DRO** ranks "
    "the targets' denoising losses above those of a lagged copy's own trajectories, relative to the untuned "
    "model (hinge, margin 1e-3). The comparison table below scores each run with judges none of them trains on. "
    "What the benchmark measured (`docs/tune.md`, thick digits 0-4): SaRA matches LoRA on this student and forgets "
    "less than LoRA only in its own multi-step setting; R0 without weight regularisation collapses the digits "
    "(judge accuracy 0.20) and with it (the default) keeps them (0.93) at a large drift; Diffusion-DRO on LoRA adds "
    "style with less drift than the fair baseline.")
ABOUT = ("**PSO** tunes the few-step student towards your targets *relative to* reference images it samples itself. "
         "What the benchmark's ablations showed (`docs/tune.md`; thick style set, 4 steps): the fair "
         "baseline, the plain diffusion loss at the student's distilled timesteps with PSO's prior term, reaches a style "
         "rate of 0.64 (a judge no run trains on) at judge accuracy 0.96 and drifts far less than PSO; DreamBooth's plain "
         "loss (uniform timesteps, no prior) is the confounded one (0.36, accuracy 0.82). PSO's DPO form adds style "
         "over the fair baseline (+0.09; +0.22 at 1 step), but with its reference term off (Reference weight 0) it "
         "does nearly as well (the references add 0 to 4 points of style at a cost of about 1 point of accuracy), so most of the "
         "gain comes from how the loss weighs the targets against the prior, not from the references. The hinge form is active for every pair at these error sizes, so it is a linear loss: at the "
         "released scripts' beta 5 the plain loss without prior; at the default 200 it also pushes the error on the "
         "model's own samples up (most drift, accuracy 0.93).")


STARTING = {"dpo": "sampling the reference images...", "hinge": "sampling the reference images...",
            "plain-distilled": "sampling the reference images...", "dro": "sampling the first trajectories..."}


def interval(e: dict | None, digits_after: int = 3) -> str:
    """``value [low, high]`` of a measured estimate (``{"value", "low", "high", ...}``); blank when not measured."""
    if not e:
        return ""
    f = f"{{:.{digits_after}f}}"
    return f"{f.format(e['value'])} [{f.format(e['low'])}, {f.format(e['high'])}]"


def table_row(number: int, tuned: tune.Tuned) -> list:
    """One line of the comparison table from a measured run."""
    r = tuned.row
    other = ", ".join(map(str, r.get("other_digits", []))) or "none"
    return [number, r["loss"], r["weights"], r["steps"], interval(r.get("style_rate")), interval(r["judge_accuracy"]),
            interval(r["drift_fd"], 1), interval(r.get("forgetting_accuracy")) + f" (digits {other})",
            interval(r.get("forgetting_fd"), 1), r["trainable"], megabytes(r), r["seconds"]]


def megabytes(r: dict) -> str:
    """Optimizer state in MB, plus SaRA's position index where there is one."""
    text = f"{r['optimizer_bytes'] / 2**20:.2f}"
    return text + (f" + {r['index_bytes'] / 2**20:.2f} index" if r.get("index_bytes") else "")


def table_csv_text(table_rows: list) -> str:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(TABLE_COLUMNS)
    writer.writerows(table_rows)
    return out.getvalue()


def describe(s: jobs.JobState, me: str) -> str:
    """The tab's status line: the shared job description, or what to do when nothing ran yet."""
    return jobs.describe(s, me) or "No training yet. Choose targets and press **Train**."


def read_uploads(paths) -> tuple[list, str]:
    """Uploaded files (paths Gradio has checked) -> 16 x 16 digit arrays and a note; one size for all."""
    arrays, notes, sizes = [], [], {}
    for path in paths or []:
        name = Path(path).name
        try:
            if Path(path).stat().st_size > MAX_BYTES:
                raise DrawingError(f"larger than {MAX_BYTES // 2**20} MB")
            image, opened = open_image(Path(path).read_bytes())
            arr, steps = to_digit(image)
        except DrawingError as exc:
            raise ParamError(f"{name}: {exc}") from None
        sizes.setdefault(image.size, name)
        arrays.append(arr)
        notes += opened + steps
    if len(sizes) > 1:
        shown = ", ".join(f"{w}x{h} ({n})" for (w, h), n in list(sizes.items())[:3])
        raise ParamError(f"the uploaded targets have different sizes: {shown}; upload images of one size")
    if len(arrays) > tune.MAX_TARGETS:
        raise ParamError(f"at most {tune.MAX_TARGETS} target images, got {len(arrays)}")
    return arrays, (f"{len(arrays)} upload(s) read" + (": " + "; ".join(sorted(set(notes))) if notes else "") + ".")


def custom_targets(uploaded: list, drawings: list, digit: int) -> tuple[torch.Tensor, list[int]]:
    """The user's targets (uploads, then drawings) as (N, 1, 16, 16) digits and their labels."""
    arrays = [*(uploaded or []), *(drawings or [])]
    if len(arrays) < tune.MIN_TARGETS:
        raise ParamError(f"PSO needs at least {tune.MIN_TARGETS} target images (drawn or uploaded), got {len(arrays)}")
    if len(arrays) > tune.MAX_TARGETS:
        raise ParamError(f"at most {tune.MAX_TARGETS} target images, got {len(arrays)}")
    return torch.from_numpy(np.stack(arrays)).float(), [int(digit)] * len(arrays)


def build_tune_tab(manager: ModelManager) -> dict[str, gr.components.Component]:
    bases = tune.bases(manager) or [tune.BASE]
    job = jobs.runner(manager, "tune", "Tune")
    pngs = PngFolder()
    with gr.Row(equal_height=False):
        with gr.Column(scale=2, min_width=300):
            gr.Markdown(ABOUT, elem_id="pso-about")
            with gr.Accordion("About SaRA, R0 and Diffusion-DRO", open=False):
                gr.Markdown(METHODS_ABOUT, elem_id="pso-methods-about")
            boxes: dict = {}
            inputs = param_inputs(tune.Params, choices={"base": bases}, id_prefix="pso-", boxes=boxes,
                                  labels={"style": STYLE_LABELS, "loss": LOSS_LABELS, "weights": WEIGHTS_LABELS})
            defaults = tune.Params()
            for group, box in boxes.items():  # a method's settings show while it is chosen
                box.visible = group in {tune.GROUP_OF.get(defaults.loss), tune.GROUP_OF.get(defaults.weights)}
            with gr.Group(visible=False) as custom_box:
                digit = gr.Number(value=4, precision=0, minimum=0, maximum=9, label="Digit shown in your targets",
                                  elem_id="pso-digit")
                uploads = gr.File(label=f"Upload 2-16 images of one size (up to {MAX_BYTES // 2**20} MB each)",
                                  file_count="multiple", file_types=["image"], type="filepath", height=100,
                                  elem_id="pso-uploads")
                sketch = gr.Sketchpad(label="...or draw targets one by one", type="numpy", image_mode="RGBA",
                                      canvas_size=(256, 256), height=280, layers=False, transforms=(),
                                      placeholder="Pick the brush (left), then draw",
                                      brush=gr.Brush(colors=["#000000"], default_size=24), elem_id="pso-sketch")
                with gr.Row():
                    add_btn = gr.Button("Add drawing", elem_id="pso-add-btn")
                    clear_btn = gr.Button("Clear drawings", elem_id="pso-clear-btn")
                drawn_info = gr.Markdown("0 drawings added.", elem_id="pso-drawn-info")
            with gr.Row():
                train_btn = gr.Button("Train", variant="primary", elem_id="pso-train-btn")
                stop_btn = gr.Button("Stop", variant="stop", elem_id="pso-stop-btn")
            with gr.Row():
                save_name = gr.Textbox(label="Save the tuned model as", placeholder="e.g. thick-digits",
                                       max_length=40, scale=3, elem_id="pso-save-name")
                save_btn = gr.Button("Save", scale=1, elem_id="pso-save-btn")
        with gr.Column(scale=3, min_width=320):
            status = gr.Markdown(describe(job.snapshot(), ""), elem_id="pso-status")
            target_view = gr.Image(label="Targets of your last Train", type="pil", interactive=False, height=110,
                                   elem_id="pso-targets")
            plot = gr.Plot(label="Training loss", elem_id="pso-plot")
            val_grid = gr.Image(label="Fixed-seed validation samples (rows: digits; columns: 1, 2, 4 steps)",
                                type="pil", interactive=False, height=300, elem_id="pso-val-grid")
            compare = gr.Image(label="Before | after (columns: 1, 2, 4 steps untuned, then 1, 2, 4 steps tuned)",
                               type="pil", interactive=False, height=300, elem_id="pso-after-grid")
            download = gr.File(label="Before / after grid (PNG with the run's parameters)", interactive=False,
                               height=60, elem_id="pso-download")
            params_json = gr.JSON(label="Parameters", open=False)
    with gr.Row():
        gr.Markdown("### Comparison of this page's runs\nEvery finished run, measured on 30 fresh samples per digit at "
                    "the student's steps, the same seeds before and after tuning (95% bootstrap intervals). Style rate: "
                    "an independent style judge (not the reward, not a target); judge accuracy: `judge-digits` on the "
                    "tuned digits; drift: FD-digits of the tuned samples to the untuned ones; forgetting: the same on "
                    "the digits the targets leave out (use the 0-4 targets to have some).", elem_id="pso-table-about")
    table = gr.Dataframe(headers=TABLE_COLUMNS, value=[], interactive=False, wrap=True, elem_id="pso-table")
    with gr.Row():
        table_csv = gr.File(label="Comparison (CSV)", interactive=False, height=60, elem_id="pso-table-csv")
        clear_table = gr.Button("Clear the table", scale=0, elem_id="pso-table-clear")
    rows = gr.State([])
    drawings = gr.State([])
    uploaded = gr.State([])
    seen = gr.State(-1)
    timer = gr.Timer(jobs.POLL_SECONDS)
    jobs.job_api(job, "pso_job")

    inputs["style"].change(lambda s: gr.update(visible=s == "custom"), inputs=[inputs["style"]], outputs=[custom_box],
                           queue=False, api_visibility="private")

    @shows_errors
    def add_drawing(sketch_value, current):
        comp = sketch_value.get("composite") if isinstance(sketch_value, dict) else None
        if comp is None:
            raise ParamError("draw a digit first (pick the brush on the left of the canvas)")
        arr, _ = to_digit(comp)
        if len(current) >= tune.MAX_TARGETS:
            raise ParamError(f"at most {tune.MAX_TARGETS} targets")
        current = [*current, arr]
        return current, f"{len(current)} drawing(s) added.", None

    add_btn.click(add_drawing, inputs=[sketch, drawings], outputs=[drawings, drawn_info, sketch],
                  api_visibility="private")
    clear_btn.click(lambda: ([], "0 drawings added."), outputs=[drawings, drawn_info], queue=False,
                    api_visibility="private")

    uploads.upload(shows_errors(read_uploads), inputs=[uploads], outputs=[uploaded, drawn_info], api_name="pso_upload", concurrency_limit=4)
    uploads.clear(lambda: ([], ""), outputs=[uploaded, drawn_info], queue=False, api_visibility="private")

    @shows_errors
    def start(request: gr.Request, **values):
        digit_value, upload_arrays, drawn = values.pop("digit"), values.pop("uploaded"), values.pop("drawings")
        p = coerce(tune.Params, values)
        tune.check_params(p)
        if p.base not in bases:
            raise ParamError(f"unknown base model {p.base!r}; choose one of {', '.join(bases)}")
        if p.style == "custom":
            try:
                d = int(digit_value)
            except (TypeError, ValueError):
                raise ParamError("the digit shown in your targets must be 0 to 9") from None
            if not 0 <= d <= 9:
                raise ParamError("the digit shown in your targets must be 0 to 9")
            images, labels = custom_targets(upload_arrays, drawn, d)
        else:
            images, labels = style_set(p.style)
        key = f"{p.base}-tuned"

        def registered(tuned: tune.Tuned) -> str:
            try:
                tune.register(tuned, manager, key, replace=True)
            except RuntimeError as exc:  # the previous tuned model is being used right now
                return f"not registered: {exc}"
            return f"registered as {key!r} (try it in the Generate tab); Save keeps it across sessions"

        me = jobs.session(request)
        job.start(me, lambda stop: tune.run(p, manager, stop=stop, images=images, labels=labels, measure=True),
                  total=p.steps, params=vars(p).copy(), on_result=registered, message=STARTING.get(p.loss, ""))
        return describe(job.snapshot(), me), to_grid(images.unsqueeze(0), TILE // images.shape[-1])

    # plain values (preprocess=False): out-of-range numbers get the studio's messages, which name the input
    train_btn.click(start, inputs_kwargs={**inputs, "digit": digit, "uploaded": uploaded, "drawings": drawings},
                    outputs=[status, target_view], api_name="pso_train", concurrency_limit=4, preprocess=False)

    @shows_errors
    def stop(request: gr.Request):
        return job.stop(jobs.session(request))

    stop_btn.click(stop, outputs=[status], api_name="pso_stop", queue=False)

    def poll(last_seen, table_rows, request: gr.Request):
        s = job.snapshot()
        if s.version == last_seen:
            return [gr.skip()] * 10
        grid = s.pictured.preview if s.pictured is not None else None
        keys = tuple(k for k in (s.history[-1] if s.history else {}) if k != "step")
        out = [s.version, describe(s, jobs.session(request)),
               loss_chart(s.history, s.total, keys, "training loss") if s.history else gr.skip(),
               to_grid(grid, TILE // grid.shape[-1]) if grid is not None else gr.skip(),
               gr.skip(), gr.skip(), gr.skip(), gr.skip(), gr.skip(), gr.skip()]
        if s.finished and s.first is not None and grid is not None:
            both = torch.cat([s.first.preview, grid], 1)
            image = to_grid(both, TILE // both.shape[-1])
            out[4] = image
            out[5] = pngs.write_file("pso-before-after.png", png_bytes(image, s.result.params))
            out[6] = s.result.params
            if s.result.row is not None:
                table_rows = [*table_rows, table_row(len(table_rows) + 1, s.result)]
                out[7:10] = table_rows, table_rows, pngs.write_file("tune-comparison.csv", table_csv_text(table_rows))
        return out

    timer.tick(poll, inputs=[seen, rows],
               outputs=[seen, status, plot, val_grid, compare, download, params_json, rows, table, table_csv],
               api_visibility="private", concurrency_limit=None, show_progress="hidden")
    clear_table.click(lambda: ([], [], None), outputs=[rows, table, table_csv], queue=False, api_visibility="private")

    def show_boxes(loss, weights):
        active = {tune.GROUP_OF.get(loss), tune.GROUP_OF.get(weights)}
        return [gr.update(visible=group in active) for group in boxes]

    for chooser in (inputs["loss"], inputs["weights"]):
        chooser.change(show_boxes, inputs=[inputs["loss"], inputs["weights"]], outputs=list(boxes.values()),
                       queue=False, api_visibility="private")

    @shows_errors
    def save(name):
        s = job.snapshot()
        if not s.finished or s.result is None:
            raise ParamError("train a model first (or wait for the run to finish)")
        name = tune.save(s.result, name, manager)
        return f"Saved as **{name}**; it is in the model lists now."

    save_btn.click(save, inputs=[save_name], outputs=[status], api_name="pso_save")
    return {**inputs, "train": train_btn, "stop": stop_btn, "status": status, "plot": plot, "val_grid": val_grid,
            "compare": compare, "save": save_btn, "job": job, "table": table, "boxes": boxes}
