"""Classify tab: a conditional diffusion model read as a classifier (Diffusion Classifier, Li et al.,
ICCV 2023; the official ``eval_prob_adaptive``): per-candidate denoising errors, the candidates each
adaptive round drops, the evaluations used, and the verdict beside the judge's and a supervised
classifier's.

Images reach the handler through Gradio's own preprocessing (a first ``classify_read`` step turns
the canvas or the upload into an array in session state); the classification step then takes
plain parameter values (``preprocess=False``) so out-of-range values get the studio's messages.
"""

from __future__ import annotations

import gradio as gr

from studio import plots
from studio.core.manager import ModelManager
from studio.core.params import coerce
from studio.core.results import to_pil
from studio.core.sampling import Progress
from studio.methods import classify, method
from studio.data.drawings import open_image
from components.widgets import PngFolder, canvas_or_upload, drawing_input, param_inputs, shows_errors

SHOWN_PIXELS = 160
INTRO = (
    "**Diffusion Classifier** (Li, Prabhudesai, Duggal, Brown, Pathak; ICCV 2023): the candidate whose noise "
    "prediction best explains the noised image is the most likely label (Bayes' rule with the ELBO). As the "
    "official `eval_prob_adaptive`: evenly spaced timesteps, one noise per timestep **shared by every "
    "candidate**, and adaptive rounds that drop the worst candidates early and re-use what was evaluated. "
    "Deviation: `shapes-t2i` predicts v, scored here in noise space (its v turned into an epsilon estimate). "
    "The errors of dropped candidates are not probabilities (the authors say so). "
    "The *bind* questions (Jeong et al., NeurIPS 2025, Self-Bench style) render a two-object scene and ask two "
    "candidates that name only what is in it, so only binding tells them apart; beside the verdict, `clip-shapes` "
    "(a small CLIP-style model trained contrastively on the same scenes and captions) reads the same candidates."
)


def conditional_models(manager: ModelManager) -> list[str]:
    """The image models a diffusion classifier can read with: class or text conditional (a loaded
    pipeline folder says nothing until it is loaded: it is listed, and checked when used)."""
    return [k for k in method("classify").models(manager)
            if manager.info(k).get("conditioning", "text") in ("class", "text") and not manager.info(k).get("few_step")]


def verdict_text(result: classify.ClassifyResult) -> str:
    lines = [f"**Diffusion classifier: {result.label}** (mean error {result.errors[result.predicted]:.4f}), "
             f"{result.evals} network evaluations in {result.seconds:.2f} s"]
    if result.truth is not None:
        right = "right" if result.truth == result.predicted else f"wrong: the truth is {result.candidates[result.truth]}"
        lines[0] += f": **{right}**"
    for rd in result.rounds:
        dropped = [result.candidates[c] for c in rd["evaluated"] if c not in rd["kept"]]
        lines.append(f"Round {rd['round']}: {len(rd['evaluated'])} candidates x {len(rd['timesteps_added'])} new "
                     f"timesteps; dropped {', '.join(dropped) if dropped else 'none'}")
    lines += [f"{r['reader']} ({r['who']}) reads **{r['reads']}**"
              + (f" (probability {r['probability']:.3f})" if r.get("probability") is not None else "")
              for r in result.readings]
    lines += result.notes
    return "\n\n".join(lines)


PROBE = "probe-digits"


def probe_panel(manager: ModelManager, model: str | None, readings: list[dict] | None = None, figure: bool = True):
    """The feature-probe panel for ``model``: (heat map of the probe's validation accuracy by decoder block
    and t, read from its studio.json without loading anything; a note with the probe's reading of the
    last classified image). Only digits models show it: the probe reads ``digits-cond``'s features.
    ``figure=False``: the note alone (the page is built without plotly's figure classes; the heat map
    is drawn when the panel is first opened)."""
    if PROBE not in manager:
        return None, "No feature probe is registered (`studio train probe-digits` makes it)."
    info = manager.info(PROBE)
    m_info = manager.info(model) if model and model in manager else {}
    if m_info.get("domain", "digits" if m_info.get("conditioning") == "class" else "") != "digits":
        return None, (f"The feature probe reads {info.get('base', 'digits-cond')}'s features of a digit: it is for "
                      "digits models, not this one.")
    g = info.get("grid", {})
    fig = (plots.probe_grid(g["blocks"], g["timesteps"], g["validation_accuracy"], "validation",
                            best=(info["block"], info["t"])) if figure and g.get("validation_accuracy") else None)
    lines = [f"**Diffusion features (DDAE's linear probe).** Forward hooks on every decoder block of "
             f"`{info.get('base', 'digits-cond')}`, its input noised to t, the null class as condition, each "
             "block's output averaged over the image, one linear head per (block, t). The heat map is "
             "**validation** accuracy (training digits held out from the heads; the test digits choose nothing: "
             "their grid is in `benchmarks/results/probe.md`). The probe is the best cell: "
             f"**block {info.get('block')}, t = {info.get('t')}**. Deviations from DDAE: the head is a logistic "
             "regression fit to convergence (DDAE: Adam, 15 epochs), and the cell is chosen on held-out training "
             "digits (DDAE reads its grid off the test set)."]
    row = next((r for r in readings or [] if r.get("reader") == PROBE), None)
    if row is not None:
        lines.append(f"The probe reads this image as **{row['reads']}** (probability {row['probability']:.3f}).")
    else:
        lines.append("Classify a digit to see the probe's reading of it.")
    return fig, "\n\n".join(lines)


def build_classify_tab(manager: ModelManager) -> dict[str, gr.components.Component]:
    models = conditional_models(manager)
    files = PngFolder()
    gr.Markdown(INTRO, elem_id="classify-intro")
    with gr.Row(equal_height=False):
        with gr.Column(scale=2, min_width=300):
            inputs = param_inputs(classify.Params, choices={"model": models}, id_prefix="classify-",
                                  names=("model", "source", "test_index", "scene_seed", "question", "candidates"))
            sketch, upload = drawing_input("classify-", "Draw a digit (image: drawing); a drawing wins over an upload")
            inputs.update(param_inputs(classify.Params, id_prefix="classify-",
                                       names=("n_samples", "to_keep", "n_trials", "loss", "shared_noise", "seed",
                                              "batch_size")))
            with gr.Row():
                run_btn = gr.Button("Classify", variant="primary", scale=3, elem_id="classify-btn")
                stop_btn = gr.Button("Stop", variant="stop", scale=1, elem_id="classify-stop-btn")
        with gr.Column(scale=3, min_width=320):
            picture = gr.Image(label="The image classified", type="pil", interactive=False, height=200,
                               elem_id="classify-image")
            info = gr.Markdown(elem_id="classify-info")
            chart = gr.Plot(label="Denoising error per candidate", elem_id="classify-chart")
            csv = gr.File(label="Every evaluation (CSV, the parameters in its header)", interactive=False,
                          elem_id="classify-csv")
            parameters = gr.JSON(label="Parameters", open=False, elem_id="classify-parameters")
            _, first_note = probe_panel(manager, models[0] if models else None, figure=False)
            with gr.Accordion("Diffusion features (linear probe)", open=False, elem_id="classify-probe") as probe_box:
                probe_chart = gr.Plot(label="Linear-probe accuracy by decoder block and t",
                                      elem_id="classify-probe-chart")
                probe_info = gr.Markdown(first_note, elem_id="classify-probe-info")
    drawing = gr.State(None)
    probe_readings = gr.State(None)
    upload_state = gr.State(None)

    @shows_errors
    def on_upload(path):
        if not path:
            return None, ""
        image, _ = open_image(path)  # size-limited; a digits model crops it to the ink, a text model centre-crops it
        return image, (f"Upload read ({image.width} x {image.height}). Pick *drawing* (digits models) or *image* "
                       "(text models) as the image to classify it (clear the canvas first).")

    upload.upload(on_upload, inputs=[upload], outputs=[upload_state, info], api_name="classify_upload",
                  concurrency_limit=4)
    upload.clear(lambda: (None, ""), outputs=[upload_state, info], queue=False, api_visibility="private")

    @shows_errors
    def classify_image(image, progress=gr.Progress(), **values):
        p = coerce(classify.Params, values)
        yield {info: ""}  # registered for cancellation before any model work
        for item in classify.run(p, manager, drawing=image):
            if isinstance(item, Progress):
                progress((item.step, item.total), desc=f"Round {item.info['round']} of {item.info['rounds']}",
                         unit="evaluations")
                continue
            stem = f"classify-{p.model}"
            yield {picture: to_pil(item.image[None], max(1, SHOWN_PIXELS // item.image.shape[-1]))[0],
                   info: verdict_text(item), chart: plots.classify_errors(item),
                   csv: files.write_file(f"{stem}.csv", item.csv()), parameters: item.parameters,
                   probe_readings: item.readings}

    read = run_btn.click(canvas_or_upload, inputs=[sketch, upload_state], outputs=[drawing],
                         api_name="classify_read", concurrency_limit=4)
    event = read.success(classify_image, inputs_kwargs={**inputs, "image": drawing},
                         outputs=[picture, info, chart, csv, parameters, probe_readings], preprocess=False,
                         api_name="classify", concurrency_id="models", concurrency_limit=1, show_progress_on=[chart])
    event.then(lambda model, rows: probe_panel(manager, model, rows), inputs=[inputs["model"], probe_readings],
               outputs=[probe_chart, probe_info], queue=False, api_visibility="private")
    for trigger in (inputs["model"].change, probe_box.expand):
        trigger(lambda model: probe_panel(manager, model), inputs=[inputs["model"]],
                outputs=[probe_chart, probe_info], queue=False, api_visibility="private")
    stop_btn.click(None, cancels=[event], api_name="classify_stop", queue=False)
    return {**inputs, "classify": run_btn, "stop": stop_btn, "sketch": sketch, "upload": upload, "picture": picture, "info": info,
            "chart": chart, "csv": csv, "parameters": parameters, "probe_chart": probe_chart, "probe_info": probe_info, "probe_box": probe_box}
