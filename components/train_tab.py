"""Train tab: train a digits diffusion model live with a choice of objective, REPA and self-conditioning.

**Train** starts ``accelerate launch -m studio.train.lab`` as a subprocess through the app's one background-job
runner (kind ``"train"``: one run at a time; every page sees its progress): a live loss curve, FD-digits and
judge accuracy of a fixed-seed sample every N steps, and the sample grid. **Stop** asks the run to end after
its step (it checkpoints, evaluates and writes its model; the process tree is killed if it does not end in
time). Finished runs stay on the plot, so a second run's curves lie over the first. **Register** makes the
last run's model one that Generate, Classify and Theory can drive. Bad settings (steps 0, a learning rate
that is not a positive number, a batch too large for the machine's memory) are refused before anything starts.
"""

from __future__ import annotations

import json

import gradio as gr

from studio.core.manager import ModelManager
from studio.core.params import ParamError, coerce
from studio.core.results import to_grid
from studio.methods import train
from studio.plots import training_runs
from components import jobs
from components.widgets import PngFolder, param_inputs, shows_errors

ABOUT = ("Train the digits UNet (16 x 16, classes 0-9 and a null class) with one objective and watch it learn. "
         "**Objectives**: DDPM with an epsilon or v target, or rectified flow (SD3: x_t = (1 - t) x0 + t eps, velocity "
         "target) with one of SD3's timestep densities (uniform, logit-normal, mode, CosMap), sampled with diffusers' "
         "FlowMatch Euler. **REPA** adds lambda times the negative cosine similarity between a projection of the "
         "UNet's 4 x 4 down-block tokens and a frozen encoder's tokens of the clean digit; the encoder is "
         "`simclr-digits`, a small SimCLR net trained on the digits here (the paper uses DINOv2). "
         "**Self-conditioning** (DDAE++) feeds the pooled bottleneck features to every decoder block. Every N steps "
         "the EMA weights draw the same fixed-seed images and two judges the run never trained read them: "
         "FD-digits (a toy Fréchet distance, not FID) and judge accuracy. What 3-seed runs of 600 steps showed "
         "(`docs/train.md`, `benchmarks/bench_train.py`): rectified flow and v prediction beat epsilon clearly "
         "(FD-digits 7 to 18 against 53); SD3's densities against uniform t, REPA and self-conditioning showed no "
         "difference from their baselines at this scale.")
MAX_SHOWN = 4  # finished runs kept on the plot (the newest)


def describe(s: jobs.JobState, me: str) -> str:
    return jobs.describe(s, me) or "No run yet. Choose the switches and press **Train**."


def build_train_tab(manager: ModelManager) -> dict[str, gr.components.Component]:
    job = jobs.runner(manager, "train", "Train")
    finished: list[tuple[str, dict]] = []  # (label, curves) of this app's finished runs, oldest first
    files = PngFolder()
    with gr.Row(equal_height=False):
        with gr.Column(scale=2, min_width=300):
            gr.Markdown(ABOUT, elem_id="train-about")
            inputs = param_inputs(train.Params, id_prefix="train-",
                                  labels={"objective": train.OBJECTIVE_LABELS, "size": train.SIZE_LABELS})
            with gr.Row():
                train_btn = gr.Button("Train", variant="primary", elem_id="train-btn")
                stop_btn = gr.Button("Stop", variant="stop", elem_id="train-stop-btn")
            with gr.Row():
                register_btn = gr.Button("Register the last run's model", elem_id="train-register-btn")
                clear_btn = gr.Button("Clear the plot", elem_id="train-clear-btn")
        with gr.Column(scale=3, min_width=320):
            status = gr.Markdown(describe(job.snapshot(), ""), elem_id="train-status")
            plot = gr.Plot(label="Training curves (finished runs stay, so runs can be compared)", elem_id="train-plot")
            grid = gr.Image(label="Fixed-seed samples at the last evaluation (columns: digits 0-9)", type="pil",
                            interactive=False, height=220, elem_id="train-grid")
            download = gr.File(label="Curves and parameters of the last run (JSON)", interactive=False, height=60,
                               elem_id="train-download")
            params_json = gr.JSON(label="Parameters", open=False, elem_id="train-parameters")
    seen = gr.State(-1)
    timer = gr.Timer(jobs.POLL_SECONDS)
    jobs.job_api(job, "train_job")

    def on_result(result: train.TrainResult) -> str:
        finished.append((result.label, result.curves))
        del finished[:-MAX_SHOWN]
        return f"run {result.run}: {result.steps_done} steps; press Register to use its model"

    @shows_errors
    def start(request: gr.Request, **values):
        p = coerce(train.Params, values)
        train.check(p)  # the messages come before anything starts
        job.start(jobs.session(request), lambda stop: train.run(p, manager, stop=stop), total=p.steps,
                  params=vars(p).copy(), on_result=on_result, message="starting the training process...")
        return describe(job.snapshot(), jobs.session(request))

    train_btn.click(start, inputs_kwargs=inputs, outputs=[status], api_name="train_start", concurrency_limit=4,
                    preprocess=False)

    @shows_errors
    def stop(request: gr.Request):
        return job.stop(jobs.session(request))

    stop_btn.click(stop, outputs=[status], api_name="train_stop", queue=False)

    @shows_errors
    def register():
        s = job.snapshot()
        if not s.finished or not isinstance(s.result, train.TrainResult):
            raise ParamError("train a model first (or wait for the run to finish)")
        key = train.register(s.result, manager)
        return (f"Registered **{key}** ({s.result.label}); pick it in Generate, Classify or Theory (the model "
                "lists refresh when a tab is opened).")

    register_btn.click(register, outputs=[status], api_name="train_register")

    def clear():
        finished.clear()
        return training_runs([])

    clear_btn.click(clear, outputs=[plot], api_name="train_clear", queue=False)

    def poll(last_seen, request: gr.Request):
        s = job.snapshot()
        if s.version == last_seen:
            return [gr.skip()] * 6
        runs = list(finished)
        live = s.last.info.get("curves") if s.running and s.last is not None and s.last.info else None
        if live:
            runs.append((train.run_label({**s.params}) + " (running)", live))
        pictured = s.pictured.preview if s.pictured is not None else None
        out = [s.version, describe(s, jobs.session(request)), training_runs(runs) if runs else gr.skip(),
               to_grid(pictured[None], 1) if pictured is not None else gr.skip(), gr.skip(), gr.skip()]
        if s.finished and isinstance(s.result, train.TrainResult):
            r = s.result
            out[4] = files.write_file(f"{r.run}-curves.json", json.dumps(
                {"parameters": r.parameters, "curves": r.curves, "steps_done": r.steps_done,
                 "seconds": r.seconds, "stopped": r.stopped, "weights_sha256": r.weights_sha256}, indent=1))
            out[5] = r.parameters
        return out

    timer.tick(poll, inputs=[seen], outputs=[seen, status, plot, grid, download, params_json],
               api_visibility="private", concurrency_limit=None, show_progress="hidden")
    return {**inputs, "train": train_btn, "stop": stop_btn, "register": register_btn, "clear": clear_btn,
            "status": status, "plot": plot, "grid": grid, "download": download, "parameters": params_json, "job": job}
