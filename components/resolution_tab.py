"""Resolution tab (DDMI): one sample rendered at 32, 64, 128 and 256 pixels beside bicubic upsampling.

Left: the source (a known scene drawn from the seed, or a prompt), the largest size, a zoom on one cell.
Right, after the run: a gallery with one row per render (DDMI; bicubic of its 32-pixel render; for a
scene, bicubic of the true 32-pixel render and the true render) and one column per size, every tile
shown at 256 pixels with nearest-neighbour scaling so its own pixels stay visible; the measurements per
size (PSNR, colour-mask IoU and edge sharpness against the true render, and what the shapes judge reads);
each render at full size as a PNG carrying its parameters.
"""

from __future__ import annotations

import gradio as gr

from studio.core.manager import ModelManager
from studio.core.results import png_bytes
from studio.methods import method, resolution
from components.widgets import PngFolder, param_inputs, run_buttons, stream

ABOUT = (
    "**DDMI** (Park et al., ICLR 2024) generates *functions* instead of pixel grids. A latent diffusion model "
    "draws a latent; the D2C-VAE's decoder turns it into feature planes at three resolutions (8, 16 and 32 here); "
    "the positional embedding of a coordinate is the bilinear reading of each plane there, and one shared MLP "
    "takes the coarse, middle and fine embeddings at successive blocks (with the *scale injection* si = 32 / R "
    "telling it the render size R) and returns a colour. So one sample renders at any size. The shapes world is "
    "procedural: for a scene its true render exists at every size, and each render is measured against it. "
    "**Deviations** at this scale (`docs/resolution.md`): a CPU-sized D2C-VAE (32 x 32 images, an 8 x 8 x 8 "
    "latent, MLP width 48), no LPIPS (no VGG weights offline; an L1 on pixel differences stands in), no noise "
    "injection, and the latent model conditioned on a caption as `shapes-t2i` is, so the judges can grade it "
    "(the paper's image models are unconditional). Trained at 32 x 32 with targets cropped from 48 and 64 pixel "
    "renders; 128 and 256 are beyond anything it saw.")
TABLE_COLUMNS = ["render", "size", "PSNR (dB)", "colour IoU", "edge sharpness", "judge reads (at 32 px)"]


def table_frame(result: resolution.ResolutionResult):
    import pandas as pd

    rows = [[r["render"], r["size"], r.get("psnr"), r.get("colour_iou"), r.get("edge_sharpness"),
             r.get("judge reads (at 32 px)", "")] for r in result.table]
    return pd.DataFrame(rows, columns=TABLE_COLUMNS)


def build_resolution_tab(manager: ModelManager) -> dict[str, gr.components.Component]:
    models = method("resolution").models(manager)
    pngs = PngFolder()
    with gr.Row(equal_height=False):
        with gr.Column(scale=2, min_width=300):
            inputs = param_inputs(resolution.Params, choices={"model": models}, id_prefix="resolution-")
            run_btn, stop_btn = run_buttons("Render at every size", "resolution-run-btn", "resolution-stop-btn")
            with gr.Accordion("About DDMI here", open=False):
                gr.Markdown(ABOUT, elem_id="resolution-about")
        with gr.Column(scale=3, min_width=360):
            info = gr.Markdown(elem_id="resolution-info")
            preview = gr.Image(label="Preview (predicted clean latent, rendered at 32 px)", type="pil",
                               interactive=False, height=160, visible=False, elem_id="resolution-preview")
            gallery = gr.Gallery(label="Rows: renders; columns: sizes (each tile shown at 256 px, nearest)",
                                 format="png", columns=len(resolution.SIZES), height=560, object_fit="contain",
                                 interactive=False, elem_id="resolution-gallery")
            table = gr.Dataframe(headers=TABLE_COLUMNS, interactive=False, max_height=360, elem_id="resolution-table")
            files = gr.File(label="Every render at full size (PNG, parameters in the text chunk)",
                            file_count="multiple", interactive=False, height=80, elem_id="resolution-files")
            parameters = gr.JSON(label="Parameters", open=False, elem_id="resolution-parameters")

    def done(result: resolution.ResolutionResult, p: resolution.Params) -> dict:
        shown = [(label, size) for label in result.rows for size in result.sizes]  # the tiles' order
        tiles = [(pngs.write_file(f"tile-{i:02d}.png", png_bytes(img, {**result.parameters, "render": label, "size": size,
                                                                       "shown_at": resolution.TILE})), cap)
                 for i, (img, cap, (label, size)) in enumerate(zip(result.images, result.captions, shown))]
        slug = {"DDMI": "ddmi", "bicubic of its 32 px render": "bicubic-own", "bicubic of the true 32 px render":
                "bicubic-true", "true render": "true"}
        paths = [pngs.write_file(f"{slug.get(label, 'render')}-{s}px.png", result.png(label, s))
                 for label in result.rows for s in result.sizes]
        return {info: "\n\n".join(result.notes) + f"\n\nDone in {result.seconds:.1f} s.",
                gallery: gr.Gallery(value=tiles, columns=len(result.sizes)), table: table_frame(result),
                files: paths, parameters: result.parameters}

    handler = stream(resolution.run, resolution.Params, manager, preview=preview, first=info, done=done,
                     desc="Sampling the latent")
    event = run_btn.click(handler, inputs_kwargs=inputs, outputs=[info, preview, gallery, table, files, parameters],
                          preprocess=False, api_name="resolution", concurrency_id="models", concurrency_limit=1,
                          show_progress_on=[gallery])
    stop_btn.click(None, cancels=[event], api_name="resolution_stop", queue=False)
    return {**inputs, "run": run_btn, "stop": stop_btn, "info": info, "gallery": gallery, "table": table,
            "files": files, "parameters": parameters}
