"""The Forecast tab: TSDiff forecasts, refinement and synthesis on a bundled series or your CSV.

Pick a bundled series (each has its zoo model) or upload a CSV and press *Train on my series*
(a few minutes on a CPU, with progress and Stop; the model so far is kept every few hundred
steps). A plotly fan chart shows the history, the median with 50/80/90% bands, the
statsforecast baselines' medians and the held-out truth; a table gives CRPS (mean weighted
quantile loss) and MASE of every method on the same window; the quantiles download as CSV.
"""

from __future__ import annotations

from pathlib import Path

import gradio as gr

from components import jobs
from components.widgets import PngFolder, param_inputs, shows_errors
from studio.core.manager import ModelManager
from studio.core.params import ParamError, coerce
from studio.core.sampling import Progress
from studio.data import series as S
from studio.methods import forecast
from studio.plots import fan_chart, training_chart

PREFIX = "forecast-"
SERIES_LABELS = {"co2": "CO2 at Mauna Loa (monthly)", "elnino": "El Nino SST (monthly)",
                 "sunspots": "Sunspots (yearly)", "unemployment": "US unemployment (quarterly)",
                 "upload": "My CSV (upload below)"}
MODE_LABELS = {"forecast": "Forecast (self-guidance)", "refine": "Refine a baseline",
               "synthesize": "Synthesize windows"}
SNAPSHOT_EVERY = 250  # training runs in the shared 'models' queue, one job at a time


def metrics_rows(result: forecast.ForecastResult) -> list[list]:
    rows = []
    for r in result.metrics:
        rows.append([r["method"], r.get("CRPS"), r.get("MASE"), r.get("seconds")])
    return rows


def summary(result: forecast.ForecastResult) -> str:
    p = result.parameters
    lines = []
    if result.lps:
        lps = result.lps
        if "synthetic" in lps:
            real = f"{lps['real']:.4f}" if lps.get("real") is not None else "n/a"
            lines.append(f"**Linear Predictive Score** (ridge model fit on {lps['synthetic_windows']} synthetic windows, "
                         f"CRPS on {lps['test_windows']} real held-out windows; lower is better): "
                         f"**{lps['synthetic']:.4f}**; the same ridge model fit on the real training windows: {real}.")
    elif result.metrics and "CRPS" in result.metrics[0]:
        best = min(result.metrics, key=lambda r: r["CRPS"])
        lines.append(f"On this window **{best['method']}** has the lowest CRPS ({best['CRPS']:.4f}).")
    elif p["holdout"] == 0:
        lines.append("Forecasting the real future: there is no truth to score yet.")
    lines.append(f"{p['samples']} samples, origin {p.get('origin')}, horizon {p['horizon']}, context {p['context']}, "
                 f"seed {p['seed']}, {result.seconds:.1f} s in all.")
    lines += [f"_Note: {n}_" for n in result.notes]
    return "\n\n".join(lines)


def describe_upload(series: S.Series, manager: ModelManager) -> str:
    key = forecast.upload_key(series)
    trained = key in manager
    notes = "; ".join(series.notes) or "no gaps"
    return (f"**{len(series)} points**, frequency **{series.freq}** (season {series.season}), "
            f"{series.index[0]} .. {series.index[-1]}; {notes}. "
            + ("A model for this series (and horizon) is trained: choose *My CSV* and Forecast."
               if trained else "Now press **Train on my series**."))


def build_forecast_tab(manager: ModelManager) -> dict[str, gr.components.Component]:
    gr.Markdown("**TSDiff**: one *unconditional* diffusion model over windows of a series. Guiding it with the "
                "observed past (self-guidance on the denoised estimate) makes it a probabilistic forecaster; the "
                "same model refines another forecaster's output and synthesises new windows. Compared on the same "
                "window with statsforecast's SeasonalNaive, AutoETS and AutoARIMA.")
    upload_state = gr.State(None)
    results = PngFolder()  # the quantile CSVs, pruned after an hour like the other tabs' PNGs
    with gr.Row(equal_height=False):
        with gr.Column(scale=2):
            inputs = param_inputs(forecast.Params, names=("series",), id_prefix=PREFIX, labels={"series": SERIES_LABELS},
                                  choices={"series": forecast.series_choices(manager)})
            inputs["mode"] = gr.Radio([(label, m) for m, label in MODE_LABELS.items()], value="forecast", label="Mode",
                                      elem_id=f"{PREFIX}param-mode")
            with gr.Accordion("Your series (CSV: a timestamp column and a value column, on any regular grid: "
                              "15 or 30 minutes, hourly, business days, daily, weekly, monthly, ...)", open=False):
                csv_file = gr.File(label=f"CSV (up to {S.MAX_CSV_BYTES // 2**20} MB)", file_types=[".csv", ".txt"],
                                   type="filepath", elem_id=f"{PREFIX}csv")
                upload_info = gr.Markdown(elem_id=f"{PREFIX}upload-info")
                train_btn = gr.Button("Train on my series", elem_id=f"{PREFIX}train-btn")
                train_status = gr.Markdown(elem_id=f"{PREFIX}train-status")
                train_plot = gr.Plot(label="Training", elem_id=f"{PREFIX}train-plot")
            with gr.Group(visible=True) as guidance_box:
                inputs.update(param_inputs(forecast.Params, names=("guidance", "scale"), id_prefix=PREFIX,
                                           labels={"guidance": forecast.GUIDANCE_LABELS}))
            with gr.Group(visible=False) as refine_box:
                inputs.update(param_inputs(
                    forecast.Params, names=("base", "refiner", "iterations"), id_prefix=PREFIX,
                    labels={"refiner": {"lmc": "Langevin (LMC)", "ml": "Maximum likelihood (SGD)"}}))
            inputs.update(param_inputs(
                forecast.Params, names=("samples", "horizon", "context", "holdout", "baselines", "seed",
                                        "randomize_seed", "sampler", "ddim_steps"),
                labels={"sampler": {"ddpm": "DDPM (official, 100 steps)", "ddim": "DDIM"}}, id_prefix=PREFIX))
        with gr.Column(scale=3):
            with gr.Row():
                run_btn = gr.Button("Forecast", variant="primary", scale=3, elem_id="forecast-btn")
                stop_btn = gr.Button("Stop", variant="stop", scale=1, elem_id=f"{PREFIX}stop-btn")
            plot = gr.Plot(label="Fan chart", elem_id=f"{PREFIX}fan")
            table = gr.Dataframe(headers=["method", "CRPS (mean wQL)", "MASE", "seconds"], label="Scores on this window "
                                 "(lower is better)", interactive=False, elem_id=f"{PREFIX}metrics")
            info = gr.Markdown(elem_id=f"{PREFIX}info")
            download = gr.File(label="Forecast quantiles (CSV)", interactive=False, elem_id=f"{PREFIX}download")
            with gr.Accordion("Parameters of this run", open=False):
                seed_used = gr.Number(label="Seed used", precision=0, interactive=False, elem_id=f"{PREFIX}seed-used")
                parameters = gr.JSON(label="Parameters (also in the CSV header)")

    inputs["mode"].change(lambda m: (gr.update(visible=m == "forecast"), gr.update(visible=m == "refine")),
                          inputs=[inputs["mode"]], outputs=[guidance_box, refine_box], queue=False,
                          api_visibility="private")
    inputs["guidance"].change(lambda g: gr.update(value=forecast.DEFAULT_SCALE[g]), inputs=[inputs["guidance"]],
                              outputs=[inputs["scale"]], queue=False, api_visibility="private")

    @shows_errors
    def read_csv(path, state):
        if not path:
            return state, "", gr.update()
        size = Path(path).stat().st_size
        if size > S.MAX_CSV_BYTES:
            raise ParamError(f"the file is {size / 1e6:.1f} MB; the limit is {S.MAX_CSV_BYTES / 1e6:.0f} MB")
        series = S.parse_csv(Path(path).read_bytes())
        return series, describe_upload(series, manager), "upload"

    csv_file.upload(read_csv, inputs=[csv_file, upload_state], outputs=[upload_state, upload_info, inputs["series"]],
                    api_name="forecast_upload", concurrency_limit=4)

    job = jobs.runner(manager, "forecast-train", "Forecast: training TSDiff on an uploaded series")
    jobs.job_api(job, "forecast_job")

    @shows_errors
    def start_training(state, horizon, context, request: gr.Request):
        """Start *Train on my series* as a background job; the timer below shows its progress."""
        if state is None:
            raise ParamError("upload a CSV first (a timestamp column and a value column)")
        p = forecast.Params(series="upload", horizon=int(horizon or 0), context=int(context or 0))
        series = forecast.upload_setup(state, p.horizon, p.context)
        key = forecast.upload_key(series)

        def training(stop):
            for item in forecast.train(p, manager, stop=stop, upload=state):
                if isinstance(item, Progress) and item.step % SNAPSHOT_EVERY == 0 and item.step < item.total:
                    from studio.train.forecast import snapshot  # imported by forecast.train already

                    register(manager, key, snapshot(item.model), partial=item.step)  # Stop keeps it
                yield item

        def trained(item) -> str:
            log = item.log
            register(manager, item.key, item.model, partial=log["steps"] if item.stopped else None)
            return (f"{log['windows']} windows, final loss {log['final_loss']:.4f}, tau {log['tau']}. Choose *My CSV* "
                    "and press Forecast.")

        job.start(jobs.session(request), training, params={"series": series.name, "model": key}, on_result=trained,
                  message=f"training on {series.train_end} points (the last horizon is held out for the backtest)")
        # the state carries the set-up being trained from the start, so a Stop leaves a usable model
        return {upload_info: "Training started; its progress shows below (and on every page).", upload_state: series}

    train_event = train_btn.click(start_training, inputs=[upload_state, inputs["horizon"], inputs["context"]],
                                  outputs=[upload_info, upload_state], api_name="forecast_train", concurrency_limit=4)

    seen = gr.State(-1)

    def poll(last_seen, request: gr.Request):
        s = job.snapshot()
        if s.version == last_seen:
            return [gr.skip()] * 4
        losses = [h["loss"] for h in s.history if "loss" in h]
        mine = s.finished and s.owner == jobs.session(request)
        return [s.version, jobs.describe(s, jobs.session(request)),
                training_chart(losses, s.total) if losses else gr.skip(),
                "upload" if mine else gr.skip()]

    gr.Timer(jobs.POLL_SECONDS).tick(poll, inputs=[seen], outputs=[seen, train_status, train_plot, inputs["series"]],
                                     api_visibility="private", concurrency_limit=None, show_progress="hidden")

    @shows_errors
    def run_forecast(progress=gr.Progress(), **values):
        state = values.pop("upload_state")
        params = coerce(forecast.Params, values)
        upload = state if params.series == "upload" else None  # carries the set-up it was trained with
        yield {info: ""}
        progress((0, 1), desc="Loading model")
        for item in forecast.run(params, manager, upload=upload):
            partial = (item.info or {}).get("partial") if isinstance(item, Progress) else None
            if isinstance(item, Progress) and partial is None:
                progress((item.step, item.total), desc="Sampling" if params.mode != "refine" else "Refining",
                         unit="steps")
                continue
            if partial is not None:
                item = partial
                progress((0, 1), desc="Fitting SeasonalNaive, AutoETS, AutoARIMA")
                yield {plot: fan_chart(item), table: metrics_rows(item), seed_used: item.parameters["seed"],
                       info: summary(item) + "\n\n_Fitting the statsforecast baselines on the same history "
                                             "(AutoARIMA can take tens of seconds) ..._"}
                continue
            path = results.write_file(f"{item.series}-forecast-seed{item.parameters['seed']}.csv",
                                      item.quantiles_csv())
            yield {plot: fan_chart(item), table: metrics_rows(item), info: summary(item), download: path,
                   seed_used: item.parameters["seed"], parameters: item.parameters}

    run_event = run_btn.click(run_forecast, inputs_kwargs={**inputs, "upload_state": upload_state},
                              outputs=[plot, table, info, download, seed_used, parameters], preprocess=False,
                              api_name="forecast", concurrency_id="models", concurrency_limit=1,
                              show_progress_on=[plot])
    def stop(request: gr.Request):
        """Stop the forecast being sampled, and the training job if this session started it."""
        s = job.snapshot()
        if s.running and s.owner == jobs.session(request):
            return job.stop(jobs.session(request))
        return gr.skip()

    stop_btn.click(stop, outputs=[train_status], cancels=[run_event], api_name="forecast_stop", queue=False)
    return {**inputs, "forecast": run_btn, "stop": stop_btn, "plot": plot, "table": table, "info": info,
            "download": download, "parameters": parameters, "csv": csv_file, "train": train_btn,
            "upload_info": upload_info, "train_status": train_status, "train_event": train_event, "guidance_box": guidance_box, "refine_box": refine_box}


def register(manager: ModelManager, key: str, model, partial: int | None = None) -> None:
    info = {k: v for k, v in model.info.items() if k != "training"}
    if partial:
        info["partial_steps"] = partial
    manager.register(key, lambda m=model: m, replace=True, info=info)
