"""Subject tab (ARBooth on a tiny VAR): teach the next-scale model a new subject from a few pictures.

Left: the subject (a bundled one, or 2-8 uploaded pictures), which tunings to compare, the prompt
(with the placeholder word 'sks'), Train (a background job: progress on every page, Stop keeps what
was trained), then Generate (the tuned models on a new prompt) and Save (one variant as a named
model). Right: the subject pictures, the loss curves, one grid per prompt (rows: the untuned model,
then each variant; the same seeds in every row) and the table of readouts.
"""

from __future__ import annotations

from pathlib import Path

import gradio as gr

from studio import lazy
from studio.core.manager import ModelManager
from studio.core.params import ParamError, coerce
from studio.core.results import png_bytes, to_grid
from studio.data.drawings import MAX_BYTES
from studio.methods import method, subject
from studio.plots import loss_chart
from components import jobs
from components.widgets import PngFolder, param_inputs, shows_errors, stream

torch = lazy.load("torch")

TILE = 64
ABOUT = (
    "**VAR** (Tian et al., NeurIPS 2024) generates an image coarse to fine: a multi-scale tokenizer writes the "
    "image as token maps of 1x1, 2x2, ... 8x8, and a transformer predicts every token of the next scale at once "
    "from the coarser ones (one pass per scale, here 6 passes). `var-shapes` is a tiny text-conditioned VAR "
    "trained here on the shapes world. **ARBooth** (Chung et al., ICCV 2025) teaches such a model a subject from "
    "a few pictures: a learned block replaces the placeholder word 'sks' in the prompt, only the cross-attention "
    "and FFN layers train (selective tuning), coarse scales weigh 1 and fine ones 0.5 in the loss, and a second "
    "step per iteration pulls the model's class-prompt predictions towards the frozen model's (prior "
    "distillation, a KL with weight 0.5). **Full fine-tuning** trains every layer on the subject alone. The "
    "readouts: **subject fidelity** (feature similarity to the subject pictures on the `fd-shapes` feature net), "
    "**prompt fidelity** (the shapes judge finds the shape where the prompt asks), **drift** (on the class prompt "
    "'a square': does the judge still find squares, and does it read the same mix of shapes and colours as on the untuned model's images?), **diversity** "
    "(mean feature distance between the images). Deviations (`docs/subject.md`): a 2-million-parameter VAR on "
    "32 x 32 shapes instead of Infinity-2B, index tokens instead of bitwise ones (no bitwise self-correction), "
    "MiniLM captions instead of Flan-T5, CPU-sized iterations. **Measured here** (`docs/subject.md`, two subjects x two "
    "seeds): full fine-tuning reaches the highest subject fidelity but halves the diversity and drifts furthest; "
    "without prior distillation ARBooth loses diversity and drifts too; sampled without guidance ARBooth's class prompt "
    "stays at chance level, at guidance 4 every variant drifts (the empty caption's branch is not protected); uniform "
    "scale weights read a slightly higher fidelity than the coarse-heavy ones; every tuning loses the prompt's region "
    "(42% untuned, 6-14% tuned).")
TABLE_COLUMNS = ["model", "subject fidelity", "prompt fidelity", "class fidelity", "class reading agreement",
                 "drift FD", "diversity",
                 "trainable params", "seconds"]


def readout_table(rows: list[dict]) -> list[list]:
    def ci(e: dict, pct: bool = False) -> str:
        f = (lambda v: f"{v:.0%}") if pct else (lambda v: f"{v:.3f}")
        return f"{f(e['value'])} [{f(e['low'])}, {f(e['high'])}]"

    return [[("untuned" if r["model"] == "base" else r["model"]), ci(r["subject_fidelity"]),
             ci(r["prompt_fidelity"], True), ci(r["class_fidelity"], True), ci(r["drift_agreement"], True),
             f"{r['drift_fd']:.1f}",
             f"{r['diversity']:.2f}", f"{r['trainable_params']:,}", f"{r['tune_seconds']:.0f}"] for r in rows]


def rows_grid(images: dict[str, torch.Tensor]):
    """One row per model (untuned first), the same seeds in each column."""
    stacked = torch.stack(list(images.values()))
    return to_grid(stacked, max(1, TILE // stacked.shape[-1]))


def describe(s: jobs.JobState, me: str) -> str:
    return jobs.describe(s, me) or "No tuning yet. Choose a subject and press **Train and compare**."


def read_pictures(paths) -> tuple[object, str]:
    """Uploaded files -> (N, 3, 32, 32) uint8 and a note (each file size-checked, re-decoded)."""
    blobs = []
    for i, path in enumerate(paths or [], 1):
        if Path(path).stat().st_size > MAX_BYTES:
            raise ParamError(f"picture {i} is larger than {MAX_BYTES // 2**20} MB")
        blobs.append(Path(path).read_bytes())
    if len(blobs) > subject.MAX_IMAGES:
        raise ParamError(f"at most {subject.MAX_IMAGES} subject pictures, got {len(blobs)}")
    arrays, notes = subject.subject_pictures(blobs)
    return arrays, f"{len(arrays)} picture(s) read" + (": " + "; ".join(notes) if notes else "") + "."


def build_subject_tab(manager: ModelManager) -> dict[str, gr.components.Component]:
    models = method("subject").models(manager) or [subject.MODEL]
    job = jobs.runner(manager, "subject", "Subject tuning")
    pngs = PngFolder()
    with gr.Row(equal_height=False):
        with gr.Column(scale=2, min_width=300):
            inputs = param_inputs(subject.Params, choices={"model": models}, id_prefix="subject-",
                                  labels={"comparison": subject.COMPARISON_LABELS})
            uploads = gr.File(label=f"Your subject: 2-8 square pictures (up to {MAX_BYTES // 2**20} MB each); "
                                    "choose 'upload' above", file_count="multiple", file_types=["image"],
                              type="filepath", height=90, elem_id="subject-uploads")
            upload_info = gr.Markdown("", elem_id="subject-upload-info")
            with gr.Row():
                train_btn = gr.Button("Train and compare", variant="primary", scale=3, elem_id="subject-train-btn")
                stop_btn = gr.Button("Stop", variant="stop", scale=1, elem_id="subject-stop-btn")
            again_btn = gr.Button("Generate again with this prompt (the finished run's models)",
                                  elem_id="subject-again-btn")
            with gr.Row():
                save_variant = gr.Dropdown(choices=list(subject.VARIANT_LABELS), value="arbooth",
                                           label="Save which variant", scale=2, elem_id="subject-save-variant")
                save_name = gr.Textbox(label="as", placeholder="e.g. my-orange-square", max_length=40, scale=2,
                                       elem_id="subject-save-name")
                save_btn = gr.Button("Save", scale=1, elem_id="subject-save-btn")
            with gr.Accordion("About VAR and ARBooth here", open=False):
                gr.Markdown(ABOUT, elem_id="subject-about")
        with gr.Column(scale=3, min_width=360):
            status = gr.Markdown(describe(job.snapshot(), ""), elem_id="subject-status")
            pictures = gr.Image(label="Subject pictures (what every variant is tuned on)", type="pil",
                                interactive=False, height=100, elem_id="subject-pictures")
            plot = gr.Plot(label="Tuning losses", elem_id="subject-plot")
            grid = gr.Image(label="The prompt (rows: untuned, then each variant; columns: the same seeds)",
                            type="pil", interactive=False, height=320, elem_id="subject-grid")
            class_grid = gr.Image(label="The class prompt (drift: compare each row with the untuned one)",
                                  type="pil", interactive=False, height=320, elem_id="subject-class-grid")
            table = gr.Dataframe(headers=TABLE_COLUMNS, value=[], interactive=False, wrap=True,
                                 elem_id="subject-table")
            info = gr.Markdown(elem_id="subject-info")
            files = gr.File(label="Grids (PNG, parameters in the text chunk)", file_count="multiple",
                            interactive=False, height=80, elem_id="subject-files")
            parameters = gr.JSON(label="Parameters", open=False, elem_id="subject-parameters")
    uploaded = gr.State(None)
    seen = gr.State(-1)
    timer = gr.Timer(jobs.POLL_SECONDS)
    jobs.job_api(job, "subject_job")

    uploads.upload(shows_errors(read_pictures), inputs=[uploads], outputs=[uploaded, upload_info],
                   api_name="subject_upload", concurrency_limit=4)
    uploads.clear(lambda: (None, ""), outputs=[uploaded, upload_info], queue=False, api_visibility="private")

    @shows_errors
    def start(request: gr.Request, **values):
        arrays = values.pop("uploaded")
        p = coerce(subject.Params, values)
        images = arrays if p.subject == "upload" else None
        x, _ = subject.check(p, manager, images)  # bad input is refused here, before a job starts
        me = jobs.session(request)
        job.start(me, lambda stop: subject.run(p, manager, images=images, stop=stop),
                  total=len(subject.COMPARISONS[p.comparison]) * p.iterations,
                  params=vars(p).copy(), message="tuning the first variant...")
        return describe(job.snapshot(), me), to_grid(x.unsqueeze(0), max(1, TILE // x.shape[-1]))

    train_btn.click(start, inputs_kwargs={**inputs, "uploaded": uploaded}, outputs=[status, pictures],
                    api_name="subject_train", concurrency_limit=4, preprocess=False)

    @shows_errors
    def stop(request: gr.Request):
        return job.stop(jobs.session(request))

    stop_btn.click(stop, outputs=[status], api_name="subject_stop", queue=False)

    def finished(result: subject.SubjectResult) -> list:
        g, cg = rows_grid(result.images), rows_grid(result.class_images)
        names = ", ".join(["untuned", *result.models])
        paths = [pngs.write_file(f"subject-{kind}.png", png_bytes(image, {**result.parameters, "rows": names,
                                                                           "grid": kind}))
                 for kind, image in (("prompt", g), ("class-prompt", cg))]
        text = "\n\n".join(result.notes) + f"\n\nRows: {names}. Column *i* uses seed {result.seeds[0]} + *i*."
        return [g, cg, readout_table(result.rows), text, paths, result.parameters]

    def poll(last_seen, request: gr.Request):
        s = job.snapshot()
        if s.version == last_seen:
            return [gr.skip()] * 9
        keys = tuple(dict.fromkeys(k for row in s.history for k in row if k != "step"))
        out = [s.version, describe(s, jobs.session(request)),
               loss_chart(s.history, s.total, keys, "tuning losses") if s.history else gr.skip()]
        if s.finished and isinstance(s.result, subject.SubjectResult):
            return out + finished(s.result)
        return out + [gr.skip()] * 6

    timer.tick(poll, inputs=[seen], outputs=[seen, status, plot, grid, class_grid, table, info, files, parameters],
               api_visibility="private", concurrency_limit=None, show_progress="hidden")

    def finished_models() -> dict:
        s = job.snapshot()
        if not s.finished or not isinstance(s.result, subject.SubjectResult):
            raise ParamError("train first (or wait for the run to finish): Generate uses the finished run's models")
        return s.result.models

    def again_run(p: subject.Params, manager_):
        return subject.prompt_again(p, manager_, finished_models())

    def again_done(images: dict, p: subject.Params) -> dict:
        g = rows_grid(images)
        path = pngs.write_file("subject-again.png", png_bytes(g, {"method": "subject", "prompt": p.prompt,
                                                                  "rows": ", ".join(images), "seed": p.seed}))
        return {grid: g, info: f"'{p.prompt}': rows {', '.join(images)}; column *i* uses seed {p.seed} + *i*.",
                files: [path]}

    handler = stream(again_run, subject.Params, manager, preview=grid, first=info, done=again_done,
                     desc="Sampling every model")
    again_btn.click(handler, inputs_kwargs=inputs, outputs=[info, grid, files], preprocess=False,
                    api_name="subject_again", concurrency_id="models", concurrency_limit=1, show_progress_on=[grid])

    @shows_errors
    def save(variant, name):
        s = job.snapshot()
        if not s.finished or not isinstance(s.result, subject.SubjectResult):
            raise ParamError("train first (or wait for the run to finish)")
        saved = subject.save(s.result, variant, name, manager)
        return f"Saved **{variant}** as **{saved}**; choose it as the model above to prompt it."

    save_btn.click(save, inputs=[save_variant, save_name], outputs=[status], api_name="subject_save")
    return {**inputs, "train": train_btn, "stop": stop_btn, "again": again_btn, "save": save_btn, "status": status,
            "grid": grid, "class_grid": class_grid, "table": table, "plot": plot, "job": job}
