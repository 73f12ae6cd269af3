"""Generate tab: plain (classifier-free guided) sampling from a zoo model.

Inputs come from :class:`studio.methods.generate.Params` by name; the handler streams a preview
grid and the progress bar from ``run``'s Progress items, and returns the images as PNG files
that carry their parameters (what the user downloads is the PNG with the text chunk).
"""

from __future__ import annotations

import gradio as gr

from studio.core.manager import ModelManager
from studio.core.sampling import SCHEDULER_LABELS
from studio.methods import generate, method
from components.widgets import PngFolder, grid_image, param_inputs, run_panel, stream


def condition_visibility(manager: ModelManager, key: str | None) -> tuple[bool, bool]:
    """(show prompt, show digit) for model ``key``, from what the manager knows without loading it;
    both when its conditioning is unknown. The key is only looked up, never made into a path."""
    cond = manager.info(key).get("conditioning") if key else None
    return (cond in ("text", None), cond in ("class", None))


def build_generate_tab(manager: ModelManager) -> dict[str, gr.components.Component]:
    """Lay out the tab inside the current Blocks/Tab and wire its events; returns its components."""
    models = method("generate").models(manager)
    pngs = PngFolder()
    with gr.Row(equal_height=False):
        with gr.Column(scale=2, min_width=320):
            inputs = param_inputs(generate.Params, choices={"model": models},
                                  labels={"scheduler": SCHEDULER_LABELS})
            show_prompt, show_digit = condition_visibility(manager, inputs["model"].value)
            inputs["prompt"].visible, inputs["digit"].visible = show_prompt, show_digit
        with gr.Column(scale=3, min_width=320):
            run_btn, stop_btn, preview, gallery = run_panel("Generate", "generate-btn")
            with gr.Row():
                seed_used = gr.Number(label="Seed used", precision=0, interactive=False, elem_id="seed-used")
                info = gr.Markdown(label="Run", elem_id="run-info")
            parameters = gr.JSON(label="Parameters", open=True, elem_id="parameters")

    def on_model(model: str):
        show_prompt, show_digit = condition_visibility(manager, model)
        info = manager.info(model) if model in manager else {}
        # a few-step model brings its own sampler, steps and guidance (e.g. digits-fewstep: DDIM, 4, none)
        defaults = [gr.update(value=info[k]) if k in info else gr.update()
                    for k in ("default_scheduler", "default_steps", "default_guidance")]
        return gr.update(visible=show_prompt), gr.update(visible=show_digit), *defaults

    inputs["model"].change(on_model, inputs=inputs["model"],
                           outputs=[inputs["prompt"], inputs["digit"], inputs["scheduler"], inputs["steps"],
                                    inputs["guidance"]],
                           api_name="model_fields", queue=False)

    def done(item, params):
        seed = item.parameters["seed"]
        return {
            preview: grid_image(item.tensors) if item.tensors is not None else None,
            gallery: pngs.write(item),
            seed_used: seed,
            parameters: item.parameters,
            info: f"{len(item.images)} image(s) in {item.seconds:.1f} s (image *i* uses seed {seed} + *i*)",
        }

    generate_images = stream(generate.run, generate.Params, manager, preview=preview, first=info, done=done)

    # preprocess=False: the raw values go to ``coerce``/``generate.check``, whose messages name the
    # input and say what to do (Gradio's own checks say "Value 0 is less than minimum value 1.").
    # These inputs (dropdowns, sliders, numbers, text, checkbox) carry plain values either way.
    run_event = run_btn.click(generate_images, inputs_kwargs=inputs,
                              outputs=[preview, gallery, seed_used, parameters, info], preprocess=False,
                              api_name="generate", concurrency_id="models", concurrency_limit=1,
                              show_progress_on=[gallery])
    stop_btn.click(None, cancels=[run_event], api_name="stop", queue=False)
    return {**inputs, "generate": run_btn, "stop": stop_btn, "preview": preview, "gallery": gallery,
            "seed_used": seed_used, "parameters": parameters, "info": info}
