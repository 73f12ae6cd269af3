"""Architectures tab (DiffusionNAG): generate NAS-Bench-201 cells for a digits task, guided by the
accuracy predictor, and see how good they really are.

Left: task, guidance scale, number of cells, seed (sampler steps under Advanced). Right: the best
generated cells drawn as DAGs (operations as coloured edges), a sortable table (arch string,
predicted accuracy, the ground truth's validation and test accuracy, parameters), where the cells
fall in the histogram of the whole space, and the search-efficiency curve (best true accuracy vs
cells trained, in predicted order, against random search). Below: train one cell (typed or taken
from the table) with the ground truth's recipe as a background job (progress on every page, Stop keeps
the cell as trained so far), and compare with the table.
"""

from __future__ import annotations

import gradio as gr
import numpy as np

from studio.core.manager import ModelManager
from studio.core.nas_metrics import best_so_far, random_search_curves
from studio.core.params import coerce
from studio.core.sampling import Progress
from studio.data.nasbench import space_values, top_fraction
from studio.methods import method, nag
from studio.plots import cell_figure, efficiency_chart, space_histogram
from components import jobs
from components.widgets import param_inputs, shows_errors

ABOUT = ("The accuracy predictor reads a cell with a transformer (the official `MetaPredictorCATE` layout), "
         "**not** the official NAS-Bench-201 predictor, a directed graph convolutional network (4 layers, hidden "
         "144): a stated deviation (`docs/nag.md`). The table's validation accuracy is what a search "
         "ranks by; its test accuracy (digits never used for any choice) is the honest figure for a picked cell. "
         "The benchmark chose the scale per task on separate seeds (all ten 10, 0-4 10, 5-9 30, even/odd 300) and, "
         "on the seeds it reports, found guided sampling no faster to a top-1% cell than unguided sampling or random "
         "cells ranked by the same predictor (95% intervals cover no difference; "
         "`benchmarks/results/nag.md`).")
DRAWN = 8          # cells drawn as DAGs
RANDOM_RUNS = 200  # random-search runs behind the reference curve


def table_frame(rows: list[dict]):
    import pandas as pd

    columns = ["predicted_acc", "val_acc", "test_acc", "params", "count", "arch"]  # the long string last
    return pd.DataFrame(rows, columns=columns) if rows else pd.DataFrame({"note": ["no valid cell was generated"]})


def figures(result: nag.NAGResult):
    """(DAGs, histogram, efficiency curve) of one generation."""
    task = result.parameters["task"]
    rows = result.rows
    drawn = rows[:DRAWN]
    titles = [f"pred {r['predicted_acc']:.3f}" + ("" if r["val_acc"] is None else f" / true {r['val_acc']:.3f}")
              for r in drawn]
    dags = cell_figure([r["arch"] for r in drawn], titles) if drawn else None
    values = space_values(task)
    if not values:
        return dags, None, None
    known = [r for r in rows if r["val_acc"] is not None]
    top = top_fraction(values)
    hist = space_histogram(np.array(list(values.values())), {"generated cells": np.array([r["val_acc"] for r in known])},
                           f"{task}: the space ({len(values):,} cells with ground truth) and the generated cells",
                           top=top)
    order = [r["arch"] for r in known]  # the official transfer NAG trains generated cells in predicted order
    curves = {}
    if order:
        curve = best_so_far(order, values)
        curves["DiffusionNAG (this run, predicted order; cells with ground truth)"] = (np.arange(1, len(curve) + 1), curve)
    length = max(len(order), 100)
    rand = random_search_curves(values, RANDOM_RUNS, length)
    x = np.arange(1, length + 1)
    curves["random search (median, 25-75%)"] = (x, np.median(rand, 0), np.quantile(rand, 0.25, 0),
                                               np.quantile(rand, 0.75, 0))
    eff = efficiency_chart(curves, top, f"{task}: best true accuracy vs cells trained")
    return dags, hist, eff


def build_nag_tab(manager: ModelManager) -> dict[str, gr.components.Component]:
    with gr.Row(equal_height=False):
        with gr.Column(scale=2, min_width=300):
            inputs = param_inputs(nag.Params, choices={"model": method("nag").models(manager)}, id_prefix="nag-")
            gen_btn = gr.Button("Generate cells", variant="primary", elem_id="nag-generate-btn")
            gr.Markdown(ABOUT, elem_id="nag-about")
            gr.Markdown("### Train one cell\nPaste an architecture string (NAS-Bench-201 format) or pick a row of "
                        "the table; it is trained on the chosen task with the ground truth's recipe (a few seconds).")
            arch_box = gr.Textbox(label="Architecture string", max_lines=1, max_length=400,
                                  placeholder="|nor_conv_3x3~0|+|none~0|skip_connect~1|+|...~0|...~1|...~2|",
                                  elem_id="nag-arch")
            with gr.Row():
                train_btn = gr.Button("Train this cell", elem_id="nag-train-btn", scale=3)
                stop_btn = gr.Button("Stop", variant="stop", elem_id="nag-stop-btn", scale=1)
            train_info = gr.Markdown(elem_id="nag-train-info")
        with gr.Column(scale=3, min_width=360):
            info = gr.Markdown(elem_id="nag-info")
            dags = gr.Plot(label="The best generated cells (by predicted accuracy)", elem_id="nag-dags")
            table = gr.Dataframe(label="Generated cells (click a row to train it; sort by any column)",
                                 headers=["predicted_acc", "val_acc", "test_acc", "params", "count", "arch"],
                                 interactive=False, elem_id="nag-table")
            hist = gr.Plot(label="Where they fall in the space", elem_id="nag-hist")
            eff = gr.Plot(label="Search efficiency", elem_id="nag-eff")
            params = gr.JSON(label="Parameters", open=False)

    @shows_errors
    def generate(progress=gr.Progress(), **values):
        p = coerce(nag.Params, values)
        progress((0, p.steps), desc="Loading model")
        for result in nag.run(p, manager):
            if isinstance(result, Progress) and (result.step % 20 == 0 or result.step == result.total):
                progress((result.step, result.total), desc="Sampling (corrector + predictor)", unit="steps")
        d, h, e = figures(result)
        first = result.rows[0]["arch"] if result.rows else ""
        return {info: "; ".join(result.notes), dags: d, table: table_frame(result.rows), hist: h, eff: e,
                params: result.parameters, arch_box: first}

    gen_btn.click(generate, inputs_kwargs=inputs, outputs=[info, dags, table, hist, eff, params, arch_box],
                  preprocess=False, api_name="nag_generate", concurrency_id="models", concurrency_limit=1,
                  show_progress_on=[dags])

    def pick(evt: gr.SelectData, frame):
        try:
            return str(frame.iloc[evt.index[0]]["arch"])
        except (KeyError, IndexError, TypeError, AttributeError):
            return gr.update()

    table.select(pick, inputs=[table], outputs=[arch_box], queue=False, api_visibility="private")

    job = jobs.runner(manager, "nag-train", "Architectures: training a cell")
    jobs.job_api(job, "nag_job")

    @shows_errors
    def train(arch, task, request: gr.Request):
        """Start *Train this cell* as a background job (bad cells are refused here, before it starts)."""
        p = coerce(nag.TrainParams, {"arch": arch, "task": task})
        nag.check_train(p)
        job.start(jobs.session(request), lambda stop: nag.train_cell(p, manager, stop=stop),
                  params={"task": p.task, "arch": p.arch}, on_result=lambda result: result.message,
                  message=f"training on {p.task}")
        return jobs.describe(job.snapshot(), jobs.session(request))

    inputs["task"].change(lambda task: nag.TASK_SCALE.get(task, gr.update()), inputs=[inputs["task"]],
                          outputs=[inputs["scale"]], queue=False, api_visibility="private")

    train_btn.click(train, inputs=[arch_box, inputs["task"]], outputs=[train_info], api_name="nag_train",
                    concurrency_limit=4)

    @shows_errors
    def stop(request: gr.Request):
        return job.stop(jobs.session(request))

    stop_btn.click(stop, outputs=[train_info], api_name="nag_stop", queue=False)
    seen = gr.State(-1)

    def poll(last_seen, request: gr.Request):
        s = job.snapshot()
        if s.version == last_seen:
            return gr.skip(), gr.skip()
        text = s.note if s.finished and s.owner == jobs.session(request) else jobs.describe(s, jobs.session(request))
        return s.version, text

    gr.Timer(jobs.POLL_SECONDS).tick(poll, inputs=[seen], outputs=[seen, train_info], api_visibility="private",
                                     concurrency_limit=None, show_progress="hidden")
    return {**inputs, "generate": gen_btn, "info": info, "dags": dags, "table": table, "hist": hist, "eff": eff,
            "arch": arch_box, "train": train_btn, "stop": stop_btn, "train_info": train_info}

