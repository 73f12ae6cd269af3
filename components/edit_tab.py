"""Edit tab (SIGN-style; no official SIGN code, the objective is our reading): one-step generation f^k(z) and zero-shot projection of corrupted digits f^k(x_c).

Two panes. *Generate*: each row is a noise z and f(z), f(f(z)), ... with the judge's reading and
the time per application. *Project*: a test digit, a drawing (Sketchpad) or an upload (any size
or format PIL reads; cropped to the ink, resized and converted, with a note saying so) is
corrupted (noise, a random box, a painted mask, or nothing) and projected with k applications of
f, beside SDEdit with the teacher at the same number of evaluations.

Images reach the handlers through Gradio's own preprocessing (a first ``edit_read`` step that
turns the canvas, the mask and the upload into arrays in session state); the projection step then
takes plain parameter values (``preprocess=False``) so out-of-range values get the studio's
messages, which name the input.
"""

from __future__ import annotations

import gradio as gr

from studio.core.manager import ModelManager
from studio.core.params import coerce
from studio.core.results import to_grid
from studio.core.sampling import Progress
from studio.methods import edit, method
from components.widgets import (CANVAS, PngFolder, canvas_or_upload, drawing_input, param_inputs, read_upload,
                                shows_errors)

GRID_PIXELS = 64  # each digit's side in the Generate grid
CORRUPTION_LABELS = {"none": "none (project as is)", "noise": "Gaussian noise", "box": "random box",
                     "mask": "painted mask"}


def table_frame(rows: list[dict]):
    """Rows of dicts -> a DataFrame the Dataframe component shows with headers (empty: no judge registered)."""
    import pandas as pd

    return pd.DataFrame(rows) if rows else pd.DataFrame({"note": ["no judge registered"]})


INTRO = (
    "**SIGN-style** (no official code; our reading of SIGN, Zaman, Liu, Chiu, 2025): an idempotent one-step "
    "generator f distilled from `digits-cond`, whose fixed points are the digits. Our f combines regression onto the "
    "teacher's DDIM samples, IGN's three losses and distribution matching. What each part buys (an ablation at an "
    "equal, reduced budget of 250 steps; table in [docs/edit.md](docs/edit.md)): regression alone already "
    "gives f(z)'s quality, but f is not idempotent (f(f(z)) is much worse) and its edits are no better than leaving "
    "the input (worse on boxes); IGN's losses make f a projector (f(f(z)) improves, noisy digits read right 94% vs "
    "83%); "
    "distribution matching added nothing measurable at that budget. Editing: f^1 vs SDEdit on the same digits is "
    "*no difference* (paired interval covers 0)."
)


def build_edit_tab(manager: ModelManager) -> dict[str, gr.components.Component]:
    models = method("edit").models(manager)
    pngs = PngFolder()
    gr.Markdown(INTRO, elem_id="sign-intro")
    with gr.Tabs():
        with gr.Tab("Generate: f(z), f(f(z)), ...", id="sign-generate"):
            with gr.Row(equal_height=False):
                with gr.Column(scale=2, min_width=300):
                    gen_inputs = param_inputs(edit.Params, choices={"model": models}, id_prefix="sign-gen-",
                                              names=edit.GENERATE_FIELDS)
                    gen_btn = gr.Button("Generate", variant="primary", elem_id="sign-generate-btn")
                with gr.Column(scale=3, min_width=320):
                    gen_grid = gr.Image(label="Rows: one noise each. Columns: z, f(z), f(f(z)), ...", type="pil",
                                        interactive=False, height=420, elem_id="sign-gen-grid")
                    gen_gallery = gr.Gallery(label="One PNG per noise (with its parameters), to download", format="png",
                                             columns=4, height=140, object_fit="contain", interactive=False,
                                             elem_id="sign-gen-gallery")
                    gen_info = gr.Markdown(elem_id="sign-gen-info")
                    gen_table = gr.Dataframe(label="What the judge reads (class and probability) after each application",
                                             headers=["image", "f^1", "f^2", "f^3"], interactive=False, elem_id="sign-gen-table")
                    gen_params = gr.JSON(label="Parameters", open=False)
        with gr.Tab("Project: edit a corrupted digit", id="sign-project"):
            with gr.Row(equal_height=False):
                with gr.Column(scale=2, min_width=300):
                    edit_inputs = param_inputs(edit.Params, choices={"model": models}, id_prefix="sign-edit-",
                                               names=("model", "source", "test_index"))
                    sketch, upload = drawing_input("sign-", "Draw a digit (source: drawing); a drawing wins over an upload")
                    edit_inputs.update(param_inputs(
                        edit.Params, id_prefix="sign-edit-", labels={"corruption": CORRUPTION_LABELS},
                        names=("corruption", "strength")))
                    mask_pad = gr.Sketchpad(label="Paint the part to hide (corruption: painted mask)", type="numpy",
                                            image_mode="RGBA", canvas_size=CANVAS, height=300, visible=False,
                                            layers=False, transforms=(), placeholder="Pick the brush, then paint",
                                            brush=gr.Brush(colors=["#ff0000"], default_size=40), elem_id="sign-mask")
                    edit_inputs.update(param_inputs(
                        edit.Params, id_prefix="sign-edit-",
                        names=("k", "compare_sdedit", "sdedit_strength", "seed")))
                    project_btn = gr.Button("Project", variant="primary", elem_id="sign-project-btn")
                with gr.Column(scale=3, min_width=320):
                    edit_gallery = gr.Gallery(label="Input, corrupted, f(x_c), f^2(x_c), ..., SDEdit (PNG with "
                                              "parameters)", format="png", columns=6, height=260, object_fit="contain",
                                              interactive=False, elem_id="sign-edit-gallery")
                    edit_info = gr.Markdown(elem_id="sign-edit-info")
                    edit_table = gr.Dataframe(label="Judge's reading and PSNR to the input", interactive=False,
                                              headers=["image", "judge reads", "probability", "PSNR to input (dB)"],
                                              elem_id="sign-edit-table")
                    edit_params = gr.JSON(label="Parameters", open=False)
    drawing = gr.State(None)
    upload_state = gr.State(None)
    mask_state = gr.State(None)

    def run(mode: str, values: dict, progress: gr.Progress, **inputs) -> edit.EditResult:
        p = coerce(edit.Params, {**values, "mode": mode})
        for item in edit.run(p, manager, **inputs):
            if isinstance(item, Progress):
                progress((item.step, item.total), desc="Applying f", unit="applications")
            else:
                return item

    @shows_errors
    def generate(progress=gr.Progress(), **values):
        result = run("generate", values, progress)
        return {gen_grid: to_grid(result.tensors, GRID_PIXELS // result.tensors.shape[-1]),
                gen_gallery: pngs.write(result),
                gen_info: "; ".join(result.notes), gen_table: table_frame(result.table), gen_params: result.parameters}

    gen_btn.click(generate, inputs_kwargs=gen_inputs, outputs=[gen_grid, gen_gallery, gen_info, gen_table, gen_params],
                  preprocess=False, api_name="sign_generate", concurrency_id="models", concurrency_limit=1,
                  show_progress_on=[gen_grid])

    edit_inputs["corruption"].change(lambda c: gr.update(visible=c == "mask"), inputs=[edit_inputs["corruption"]],
                                     outputs=[mask_pad], queue=False, api_visibility="private")

    @shows_errors
    def on_upload(path):
        image, note = read_upload(path)  # checked now, converted again (same notes) when projected
        return image, note and note + ". Pick *drawing* as the source to project it (clear the canvas first)."

    upload.upload(on_upload, inputs=[upload], outputs=[upload_state, edit_info], api_name="sign_upload",
                  concurrency_limit=4)
    upload.clear(lambda: (None, ""), outputs=[upload_state, edit_info], queue=False, api_visibility="private")

    @shows_errors
    def read_canvas(sketch_value, mask_value, uploaded):
        """Canvas / upload / mask -> session state (Gradio has checked and decoded the files)."""
        image = canvas_or_upload(sketch_value, uploaded)
        mask = (mask_value or {}).get("composite") if isinstance(mask_value, dict) else None
        return image, mask

    @shows_errors
    def project(image, mask, progress=gr.Progress(), **values):
        result = run("project", values, progress, drawing=image, mask=mask)
        notes = list(result.notes)
        notes.append(f"{len(result.images) - 2 - int(result.parameters['compare_sdedit'])} application(s) of f in "
                     f"{1000 * result.seconds:.0f} ms")
        return {edit_gallery: pngs.write(result),
                edit_info: "; ".join(notes), edit_table: table_frame(result.table), edit_params: result.parameters}

    read = project_btn.click(read_canvas, inputs=[sketch, mask_pad, upload_state], outputs=[drawing, mask_state],
                             api_name="sign_read", concurrency_limit=4)
    read.success(project, inputs_kwargs={**edit_inputs, "image": drawing, "mask": mask_state},
                 outputs=[edit_gallery, edit_info, edit_table, edit_params], preprocess=False,
                 api_name="sign_project", concurrency_id="models", concurrency_limit=1,
                 show_progress_on=[edit_gallery])
    return {**{f"gen_{k}": v for k, v in gen_inputs.items()}, **{f"edit_{k}": v for k, v in edit_inputs.items()},
            "generate": gen_btn, "gen_grid": gen_grid, "gen_gallery": gen_gallery, "gen_table": gen_table, "project": project_btn,
            "sketch": sketch, "upload": upload, "mask": mask_pad, "edit_gallery": edit_gallery,
            "edit_table": edit_table, "edit_info": edit_info}
