"""Weights tab (D2NWG, with p-diff as its baseline): generate a digits classifier's weights for a task
with diffusion, see how good they are without training, as an initialisation, and whether they are copies.

Left: the generator and the task (each task's title and its side of the generators' training data),
or *my examples*: draw a digit or upload images, label them, *Add example* collects them in this
page's session (16 x 16, as the zoo's digits). Right, streamed: the sampling steps (progress bar), the
fine-tuning curve as it is trained, then the histogram of the k generated models' accuracies beside the
zoo's models of the task and random initialisations, the memorisation table and scatter, and a
download of any generated model as safetensors (its parameters in the metadata).
"""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

import gradio as gr
import numpy as np

from studio import lazy, plots
from studio.core.manager import ModelManager
from studio.core.params import ParamError, coerce
from studio.core.results import to_pil
from studio.core.sampling import Progress
from studio.data import digit_tasks
from studio.data.drawings import MAX_BYTES, DrawingError, open_image, to_digit
from studio.methods import method, weights
from components.widgets import CANVAS, PngFolder, has_ink, param_inputs, run_buttons, shows_errors

torch = lazy.load("torch")

ABOUT = (
    "**D2NWG** (Soro et al., ICLR 2025) learns the distribution of the weights of a zoo of classifiers trained on "
    "many tasks and samples weights for a task from **a few of its labelled examples**: a VAE over the flat weight "
    "vectors, a dataset encoder over 5 examples per class (features of the studio's self-supervised `simclr-digits`, "
    "never the judge; pooled within each class, then across classes, aligned with the weight latents by the "
    "symmetric contrastive loss) and a latent diffusion model conditioned on that encoding. It takes tasks it never "
    "saw, and your own examples. **p-diff** (Wang et al. 2024), the baseline, learns one autoencoder + DDPM per "
    "task from 200 checkpoints of continued training of the last layer: it has models of **its own tasks only**. "
    "Deviations at this scale (`docs/weights.md`): a tiny CNN of 1,954 parameters instead of ResNets, one zoo of 52 "
    "digits tasks (rotations, stroke styles, noise, class subsets) fine-tuned from one shared base, 5 examples per "
    "class (the official set encoder reads 20). The generated models are scored on the task's **test split**; the "
    "one fine-tuned is the best on the few examples (never chosen on the test split), beside a random "
    "initialisation trained on the same examples and the zoo model of the most similar seen task. Memorisation: "
    "each generated model's nearest training checkpoint (L2 distance, share of test images they classify alike); a "
    "copy sits near distance 0 at agreement above 99%.")
SPLIT_WORDS = {"seen": "seen: in the generators' training data",
               "held-out": "held out: never seen by a generator (the benchmark reports on it)",
               "selection": "selection: never seen by a generator (settings were chosen on it)"}
TASK_LABELS = {**{t.id: f"{t.id}: {t.title} [{digit_tasks.split_of(t)}]" for t in digit_tasks.ALL},
               weights.OWN: "my examples (draw or upload below)"}
TABLE_COLUMNS = ["model", "accuracy", "nearest checkpoint", "its task", "distance", "agreement"]
COLUMN_WIDTHS = ["17%", "13%", "15%", "26%", "13%", "16%"]
FILE_STEMS = {"D2NWG": "d2nwg", "p-diff": "pdiff"}


def task_note(manager: ModelManager, model: str, task: str) -> str:
    """What the chosen task is, which side of the training data it is on, and whether ``model`` can take it."""
    if task == weights.OWN:
        text = ("**Your examples**: draw a digit or upload images, choose the digit they show, *Add example*; "
                "at least two classes. The models are then scored on your examples themselves (there is no test split).")
    elif task in digit_tasks.BY_ID:
        t = digit_tasks.task(task)
        text = f"**{task}**: {t.title}; {SPLIT_WORDS[digit_tasks.split_of(t)]}."
    else:
        return ""
    own = manager.info(model).get("tasks") if manager.info(model).get("method") == "pdiff" else None
    if own is not None and task not in own:
        text += (f"\n\n*p-diff has models of {len(own)} task(s) only ({', '.join(own[:6])}"
                 f"{', ...' if len(own) > 6 else ''}); choose one of them, or D2NWG.*")
    return text


def read_example_uploads(paths) -> list[np.ndarray]:
    """Uploaded image files -> (1, 16, 16) digits in [-1, 1]; a file that is not a digit image is named."""
    out = []
    for path in paths or []:
        name = Path(path).name
        try:
            if Path(path).stat().st_size > MAX_BYTES:
                raise DrawingError(f"larger than {MAX_BYTES // 2**20} MB")
            image, _ = open_image(Path(path).read_bytes())
            out.append(to_digit(image)[0])
        except DrawingError as exc:
            raise ParamError(f"{name}: {exc}") from None
    return out


def examples_picture(examples: dict, tile: int = 32, per_row: int = 16):
    """Your examples as one picture: a row per digit (more rows for a digit with over ``per_row``), its label at
    the left; None when there are none."""
    from PIL import Image, ImageDraw

    if not examples["labels"]:
        return None
    labels = np.asarray(examples["labels"])
    tiles = to_pil(torch.from_numpy(np.stack(examples["images"])), tile // 16)
    rows = [(d, idx[i:i + per_row]) for d in np.unique(labels) for idx in [np.flatnonzero(labels == d)]
            for i in range(0, len(idx), per_row)]
    width = tile + min(per_row, max(len(r) for _, r in rows)) * (tile + 2)
    picture = Image.new("RGB", (width, len(rows) * (tile + 2)), "white")
    draw = ImageDraw.Draw(picture)
    for r, (digit, idx) in enumerate(rows):
        y = r * (tile + 2)
        draw.text((tile // 3, y + tile // 3), str(digit), fill="black")
        for c, i in enumerate(idx):
            picture.paste(tiles[i].convert("RGB"), (tile + c * (tile + 2), y))
    return picture


def examples_info(examples: dict) -> str:
    labels = examples["labels"]
    if not labels:
        return "No examples yet."
    counts = np.bincount(labels, minlength=10)
    return (f"{len(labels)} example(s): " + ", ".join(f"{c} x {d}" for d, c in enumerate(counts) if c)
            + ("" if len(set(labels)) >= 2 else " (add a second class)"))


def table_frame(rows: list[dict], best: int):
    import pandas as pd

    keys = ["model", "accuracy", "nearest_checkpoint", "its_task", "distance", "agreement"]  # the method's row keys
    frame = pd.DataFrame([[r[k] for k in keys] for r in rows], columns=TABLE_COLUMNS)
    frame = frame.sort_values("accuracy", ascending=False, kind="stable")
    frame["model"] = [f"{m} (fine-tuned)" if m == best else str(m) for m in frame["model"]]
    return frame


def summary(result: weights.WeightsResult) -> str:
    lines = list(result.notes)
    near = digit_tasks.task(result.nearest_task).title if result.nearest_task in digit_tasks.BY_ID else ""
    lines.append(f"Nearest seen task (per-class mean features of the few examples): **{result.nearest_task}** "
                 f"({near}); its zoo model scores {result.nearest_accuracy:.1%} here.")
    if result.curve:
        last = result.curve[-1]
        lines.append(f"After {last['step']} SGD steps on the few examples: best generated model (#{result.best}) "
                     f"{last['generated']:.1%}, random init {last['random']:.1%}, nearest zoo model "
                     f"{last['nearest']:.1%} (on {result.evaluated_on}).")
    lines.append(f"Seconds: {', '.join(f'{k} {v:.2f}' for k, v in result.seconds.items())}.")
    return "\n\n".join(lines)


def build_weights_tab(manager: ModelManager) -> dict[str, gr.components.Component]:
    models = method("weights").models(manager)
    files = PngFolder()
    defaults = weights.Params()
    with gr.Row(equal_height=False):
        with gr.Column(scale=2, min_width=300):
            inputs = param_inputs(weights.Params, choices={"model": models}, labels={"task": TASK_LABELS},
                                  id_prefix="weights-", names=("model", "task"))
            first_model = models[0] if models else defaults.model
            note = gr.Markdown(task_note(manager, first_model, defaults.task), elem_id="weights-task-note")
            with gr.Group(visible=defaults.task == weights.OWN, elem_id="weights-own") as own_box:
                sketch = gr.Sketchpad(label="Draw a digit", type="numpy", image_mode="RGBA", canvas_size=CANVAS,
                                      height=260, layers=False, transforms=(),
                                      placeholder="Pick the brush (left), then draw",
                                      brush=gr.Brush(colors=["#000000"], default_size=20), elem_id="weights-sketch")
                uploads = gr.File(label=f"...and/or upload images of one digit (up to {MAX_BYTES // 2**20} MB each)",
                                  file_count="multiple", file_types=["image"], type="filepath", height=90,
                                  elem_id="weights-uploads")
                label = gr.Radio(choices=list(range(10)), value=0, label="The digit they show",
                                 elem_id="weights-label")
                with gr.Row():
                    add_btn = gr.Button("Add example", scale=3, elem_id="weights-add-btn")
                    clear_btn = gr.Button("Clear", scale=1, elem_id="weights-clear-btn")
                own_info = gr.Markdown("No examples yet.", elem_id="weights-own-info")
                own_picture = gr.Image(label="Your examples (a row per digit, its label at the left)", type="pil",
                                       interactive=False, height=160, elem_id="weights-own-picture")
            inputs.update(param_inputs(weights.Params, id_prefix="weights-",
                                       names=[f.name for f in fields(weights.Params) if f.name not in inputs]))
            gen_btn, stop_btn = run_buttons("Generate", "weights-generate-btn", "weights-stop-btn")
            with gr.Accordion("About D2NWG and p-diff here", open=False):
                gr.Markdown(ABOUT, elem_id="weights-about")
        with gr.Column(scale=3, min_width=360):
            info = gr.Markdown(elem_id="weights-info")
            hist = gr.Plot(label="Accuracy without training", elem_id="weights-hist")
            curve_plot = gr.Plot(label="As an initialisation: fine-tuning (accuracy on the evaluation images)",
                                 elem_id="weights-curve")
            with gr.Accordion("Memorisation: each generated model's nearest training checkpoint", open=True):
                scatter = gr.Plot(label="Distance vs agreement", elem_id="weights-scatter")
                table = gr.Dataframe(headers=TABLE_COLUMNS, interactive=False, max_height=300, column_widths=COLUMN_WIDTHS, wrap=True,
                                     elem_id="weights-table")
            with gr.Row():
                index = gr.Number(value=0, precision=0, minimum=0, maximum=weights.MAX_K - 1, scale=1,
                                  label="Model to download (default: the fine-tuned one)", elem_id="weights-index")
                download_btn = gr.Button("Download", scale=1, elem_id="weights-download-btn")
            model_file = gr.File(label="Generated model (safetensors: TinyCNN's state_dict, parameters in metadata)",
                                 interactive=False, height=60, elem_id="weights-file")
            params_json = gr.JSON(label="Parameters", open=False, elem_id="weights-parameters")
    examples = gr.State({"images": [], "labels": []})
    last = gr.State(None)

    def on_choice(model, task):
        return task_note(manager, model, task), gr.update(visible=task == weights.OWN)

    for chooser in (inputs["model"], inputs["task"]):
        chooser.change(on_choice, inputs=[inputs["model"], inputs["task"]], outputs=[note, own_box], queue=False,
                       api_visibility="private")

    @shows_errors
    def add_example(sketch_value, paths, digit, current):
        try:
            d = int(digit)
        except (TypeError, ValueError):
            raise ParamError("choose the digit your examples show (0 to 9)") from None
        if not 0 <= d <= 9:
            raise ParamError("the digit your examples show must be 0 to 9")
        new = read_example_uploads(paths)
        if has_ink(sketch_value):
            new.append(to_digit(sketch_value["composite"])[0])
        if not new:
            raise ParamError("draw a digit on the canvas or upload images first, then press Add example")
        if len(current["labels"]) + len(new) > weights.MAX_EXAMPLES:
            raise ParamError(f"at most {weights.MAX_EXAMPLES} examples; Clear some first")
        current = {"images": [*current["images"], *new], "labels": [*current["labels"], *[d] * len(new)]}
        blank = {"background": None, "layers": [], "composite": None}  # a fresh value: None twice clears nothing
        return current, examples_info(current), examples_picture(current), blank, None

    add_btn.click(add_example, inputs=[sketch, uploads, label, examples],
                  outputs=[examples, own_info, own_picture, sketch, uploads], api_name="weights_add_example",
                  concurrency_limit=4)
    clear_btn.click(lambda: ({"images": [], "labels": []}, "No examples yet.", None),
                    outputs=[examples, own_info, own_picture], queue=False, api_name="weights_clear_examples")

    @shows_errors
    def generate(progress=gr.Progress(), **values):
        mine = values.pop("examples")
        p = coerce(weights.Params, values)
        images = labels = None
        if p.task == weights.OWN and mine["labels"]:
            images, labels = torch.from_numpy(np.stack(mine["images"])), np.asarray(mine["labels"])
        weights.check(p, manager, images, labels)  # bad input: a message, and the last results stay
        yield {info: f"Generating {p.k} models for {TASK_LABELS.get(p.task, p.task)}..."}
        progress((0, p.steps), desc="Loading the generator")
        for item in weights.run(p, manager, images=images, labels=labels):
            if isinstance(item, weights.CurveStep):
                progress((item.step, item.total), desc="Fine-tuning", unit="steps")
                yield {curve_plot: plots.finetune_curves(item.info["curve"], p.finetune_steps)}
            elif isinstance(item, Progress):
                progress((item.step, item.total), desc="Sampling weights", unit="steps")
            else:
                yield finished(item, p)

    def finished(result: weights.WeightsResult, p: weights.Params) -> dict:
        title = f"{p.k} generated models on {result.evaluated_on}"
        return {info: summary(result), last: result,
                hist: plots.weights_histogram(result.accuracy, result.zoo_accuracy, result.random_accuracy,
                                              result.nearest_accuracy, result.nearest_task, title),
                curve_plot: plots.finetune_curves(result.curve, p.finetune_steps) if result.curve else None,
                scatter: plots.memorisation_scatter(result.memorisation, result.spread),
                table: table_frame(result.memorisation, result.best), index: result.best,
                model_file: write_model(result, result.best), params_json: result.parameters}

    def write_model(result: weights.WeightsResult, i: int) -> str:
        stem = FILE_STEMS.get(result.parameters.get("method"), "generated")  # never a user's string
        return files.write_file(f"{stem}-model-{i:03d}.safetensors", weights.model_file(result, i))

    event = gen_btn.click(generate, inputs_kwargs={**inputs, "examples": examples},
                          outputs=[info, last, hist, curve_plot, scatter, table, index, model_file, params_json],
                          preprocess=False, api_name="weights_generate", concurrency_id="models",
                          concurrency_limit=1, show_progress_on=[hist])
    stop_btn.click(None, cancels=[event], api_name="weights_stop", queue=False)

    @shows_errors
    def download(result, i):
        if result is None:
            raise ParamError("generate models first, then download one")
        if i is None:
            raise ParamError(f"choose the model to download (0 to {len(result.thetas) - 1})")
        return write_model(result, int(i))  # a whole number: the Number input rounds it

    download_btn.click(download, inputs=[last, index], outputs=[model_file], api_name="weights_download",
                       concurrency_limit=4)
    return {**inputs, "generate": gen_btn, "stop": stop_btn, "info": info, "hist": hist, "curve": curve_plot,
            "scatter": scatter, "table": table, "download": download_btn, "file": model_file, "note": note,
            "examples": own_box}
