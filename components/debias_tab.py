"""Debias tab (InvDiff): a biased model's images beside InvDiff's, the same noise seeds.

Left: the InvDiff module, the prompt (leave the colour out to see the bias), the mix ``r`` and how many
images each model draws. Right, after the run: the two grids side by side (downloadable PNGs carrying the
parameters), the colour histogram the shapes judge reads on each with its bias score, and the inferred
groups against the true attribute (measured only: InvDiff never sees it).
"""

from __future__ import annotations

import gradio as gr

from studio import plots
from studio.core.manager import ModelManager
from studio.core.results import png_bytes
from studio.methods import debias, method
from components.widgets import PngFolder, grid_image, param_inputs, run_buttons, stream

ABOUT = (
    "**InvDiff** (Hou et al., KDD 2025) mitigates a diffusion model's bias **without bias labels**. The biased "
    "model here, `shapes-biased`, is the studio's text-to-image shapes model fine-tuned on a world where 9 circles "
    "in 10 are red and 9 squares in 10 blue, and most captions leave the colour out: 'a circle' comes out red. "
    "InvDiff's **MAX** step infers soft groups of the training images from the biased model's own per-sample "
    "losses (8 groups, the official alpha 3); its **MIN** step trains a module *delta* (a copy of the UNet, output "
    "zeroed at the start) through `eps = r * delta + (1 - r) * eps_b` with the frozen biased model, on the mean "
    "plus the variance of the groups' losses, so that it fits every group alike. The colour of each image is read "
    "by the shapes judge (trained by neither model); the **bias score** is the official formula over red / blue "
    "(0: balanced, 1: one colour). Triangles carry no bias (the control). Deviations at this scale "
    "(`docs/debias.md`): a 32 x 32 shapes world instead of Stable Diffusion on CelebA / Waterbirds, CPU-sized "
    "training, 10% of the captions emptied while training delta so that the unconditional branch of "
    "classifier-free guidance is debiased too. **Measured here** (`docs/debias.md`): the groups the official "
    "grouper infers do not follow the colour (NMI 0.002) and the bias stays (1.00 at r = 0.8, 0.98 for the biased "
    "model); trained the same way on the true groups (the benchmark's oracle, not shipped) delta lowers it to 0.35.")
GROUP_COLUMNS = ["group", "images", "triangle", "majority colour", "minority colour"]


def group_frame(groups: dict):
    import pandas as pd

    rows = [[g, row["size"], row.get("0", 0.0), row.get("1", 0.0), row.get("2", 0.0)]
            for g, row in sorted(groups.get("groups", {}).items(), key=lambda kv: -kv[1]["size"])]
    frame = pd.DataFrame(rows, columns=GROUP_COLUMNS)
    for c in GROUP_COLUMNS[2:]:
        frame[c] = frame[c].map(lambda v: f"{v:.0%}")
    return frame


def build_debias_tab(manager: ModelManager) -> dict[str, gr.components.Component]:
    models = method("debias").models(manager)
    pngs = PngFolder()
    with gr.Row(equal_height=False):
        with gr.Column(scale=2, min_width=300):
            inputs = param_inputs(debias.Params, choices={"model": models}, id_prefix="debias-")
            run_btn, stop_btn = run_buttons("Generate both", "debias-run-btn", "debias-stop-btn")
            with gr.Accordion("About InvDiff here", open=False):
                gr.Markdown(ABOUT, elem_id="debias-about")
        with gr.Column(scale=3, min_width=360):
            info = gr.Markdown(elem_id="debias-info")
            with gr.Row(equal_height=False):
                biased = gr.Image(label="Biased model (r = 0)", type="pil", interactive=False, height=300,
                                  elem_id="debias-biased")
                debiased = gr.Image(label="InvDiff (the same noise seeds)", type="pil", interactive=False, height=300,
                                    elem_id="debias-debiased")
            hist = gr.Plot(label="Colours the judge reads", elem_id="debias-hist")
            with gr.Accordion("Inferred groups vs the true attribute (measured; InvDiff never sees it)", open=False):
                groups = gr.Dataframe(headers=GROUP_COLUMNS, interactive=False, max_height=300,
                                      elem_id="debias-groups")
            files = gr.File(label="The two grids (PNG, parameters in the text chunk)", file_count="multiple",
                            interactive=False, height=80, elem_id="debias-files")
            parameters = gr.JSON(label="Parameters", open=False, elem_id="debias-parameters")

    def done(result: debias.DebiasResult, p: debias.Params) -> dict:
        grids = [grid_image(result.tensors[0]), grid_image(result.tensors[1])]
        paths = [pngs.write_file(f"debias-{name}.png", png_bytes(g, {**result.parameters, "model_shown": name}))
                 for name, g in zip(("biased", "debiased"), grids)]
        labels = {"biased": "biased (r = 0)", "debiased": f"InvDiff (r = {p.r:g})"}
        return {info: "\n\n".join(result.notes) + f"\n\n{2 * p.n_images} images in {result.seconds:.1f} s "
                      f"(image *i* of each model uses noise seed {p.seed} + *i*).",
                biased: grids[0], debiased: grids[1],
                hist: plots.colour_histograms(result.readouts, labels, f"'{p.prompt}': {p.n_images} images each"),
                groups: group_frame(result.groups), files: paths, parameters: result.parameters}

    handler = stream(debias.run, debias.Params, manager, preview=biased, first=info, done=done,
                     desc="Sampling (biased, then InvDiff)")
    event = run_btn.click(handler, inputs_kwargs=inputs,
                          outputs=[info, biased, debiased, hist, groups, files, parameters], preprocess=False,
                          api_name="debias", concurrency_id="models", concurrency_limit=1,
                          show_progress_on=[biased, debiased])
    stop_btn.click(None, cancels=[event], api_name="debias_stop", queue=False)
    return {**inputs, "run": run_btn, "stop": stop_btn, "info": info, "biased": biased, "debiased": debiased,
            "hist": hist, "groups": groups, "files": files, "parameters": parameters}
