"""Plotly figures the tabs and the notebooks share (plotly only: no Gradio here)."""

from __future__ import annotations

import numpy as np

FAN_BANDS = ((0.05, 0.95, "90%"), (0.1, 0.9, "80%"), (0.25, 0.75, "50%"))
COLOURS = {"TSDiff": "#1f77b4", "SeasonalNaive": "#7f7f7f", "AutoETS": "#2ca02c", "AutoARIMA": "#9467bd"}


def _colour(name: str) -> str:
    return next((c for k, c in COLOURS.items() if name.startswith(k)), "#d62728")


def _rgba(hex_colour: str, alpha: float) -> str:
    h = hex_colour.lstrip("#")
    return f"rgba({int(h[0:2], 16)},{int(h[2:4], 16)},{int(h[4:6], 16)},{alpha})"


def fan_chart(result, height: int = 420):
    """A :class:`studio.methods.forecast.ForecastResult` as a fan chart: history, the studio
    method's median with 50/80/90% bands (from its samples), the baselines' medians, the base
    forecast's 80% band in refine mode, the held-out truth, or synthetic windows."""
    import plotly.graph_objects as go

    fig = go.Figure()
    n_hist = len(result.history)
    x_hist = result.labels[:n_hist]
    x_fut = result.labels[n_hist:]
    fig.add_trace(go.Scatter(x=x_hist, y=result.history, mode="lines", name="history",
                             line={"color": "black", "width": 1.6}))
    if result.synthetic is not None:
        L = result.synthetic.shape[1]
        xs = result.labels[-L:] if len(result.labels) >= L else list(range(L))
        for i, w in enumerate(result.synthetic[:20]):
            fig.add_trace(go.Scatter(x=xs, y=w, mode="lines", line={"color": _colour("TSDiff"), "width": 0.8},
                                     opacity=0.45, name="synthetic windows", legendgroup="synthetic",
                                     showlegend=i == 0))
    if result.samples.size:
        name = result.method
        colour = _colour(name)
        for lo, hi, label in FAN_BANDS:
            qlo, qhi = np.quantile(result.samples, [lo, hi], axis=0)
            fig.add_trace(go.Scatter(x=x_fut + x_fut[::-1], y=np.concatenate([qhi, qlo[::-1]]), fill="toself",
                                     fillcolor=_rgba(colour, 0.18), line={"width": 0}, hoverinfo="skip",
                                     name=f"{name} {label}", showlegend=True))
        fig.add_trace(go.Scatter(x=x_fut, y=np.median(result.samples, 0), mode="lines+markers", name=f"{name} median",
                                 line={"color": colour, "width": 2.4}, marker={"size": 4}))
    if result.before is not None and result.before in result.quantiles:
        q = result.quantiles[result.before]
        fig.add_trace(go.Scatter(x=x_fut + x_fut[::-1], y=np.concatenate([q[8], q[0][::-1]]), fill="toself",
                                 fillcolor=_rgba(_colour(result.before), 0.12), line={"width": 0},
                                 name=f"{result.before} 80% (before refinement)", hoverinfo="skip"))
    for name, q in result.quantiles.items():
        if name == result.method:
            continue
        fig.add_trace(go.Scatter(x=x_fut, y=q[4], mode="lines", name=f"{name} median",
                                 line={"color": _colour(name), "width": 1.4, "dash": "dot"}))
    if result.truth is not None:
        fig.add_trace(go.Scatter(x=x_fut, y=result.truth, mode="lines+markers", name="held-out truth",
                                 line={"color": "black", "width": 1.6, "dash": "dash"}, marker={"size": 4}))
    fig.update_layout(title=result.title, template="plotly_white", height=height,
                      margin={"l": 50, "r": 10, "t": 40, "b": 40}, legend={"orientation": "h", "y": -0.2},
                      hovermode="x unified")
    return fig


def training_chart(losses: list[float], total: int, height: int = 240):
    """Training loss per reported step (the tab's 'Train on my series')."""
    import plotly.graph_objects as go

    fig = go.Figure(go.Scatter(y=losses, mode="lines", name="epsilon-MSE"))
    fig.update_layout(title=f"training loss ({len(losses) * 10} / {total} steps)", yaxis_type="log",
                      template="plotly_white", height=height, margin={"l": 50, "r": 10, "t": 40, "b": 30},
                      xaxis_title="x10 steps")
    return fig


def loss_chart(history: list[dict], total: int, keys: tuple[str, ...], title: str = "training loss", height: int = 260):
    """Losses per step from a training history (rows of {"step": ..., key: value}), one line per key."""
    import plotly.graph_objects as go

    fig = go.Figure()
    steps = [row["step"] for row in history]
    for key in keys:
        if any(key in row for row in history):
            fig.add_trace(go.Scatter(x=steps, y=[row.get(key) for row in history], mode="lines", name=key))
    fig.update_layout(title=f"{title} ({steps[-1] if steps else 0} / {total} steps)", template="plotly_white",
                      height=height, margin={"l": 50, "r": 10, "t": 40, "b": 30}, xaxis_title="step",
                      legend={"orientation": "h", "y": -0.25})
    return fig


def training_runs(runs: list[tuple[str, dict]], height: int = 300):
    """The Train tab's curves, one colour per run (``(label, curves)``, curves as
    :func:`studio.methods.train.read_curves` gives them): loss (a 25-step running mean), FD-digits and judge
    accuracy of the fixed-seed sample against training steps, each evaluation with its bootstrap interval."""
    import plotly.graph_objects as go
    from plotly.colors import DEFAULT_PLOTLY_COLORS
    from plotly.subplots import make_subplots

    fig = make_subplots(rows=1, cols=3, subplot_titles=("loss (25-step mean)", "FD-digits (lower is better)",
                                                         "judge accuracy"), horizontal_spacing=0.07)
    for i, (label, curves) in enumerate(runs):
        colour = DEFAULT_PLOTLY_COLORS[i % len(DEFAULT_PLOTLY_COLORS)]
        loss = np.asarray(curves.get("loss") or [], dtype=float).reshape(-1, 2)
        if len(loss):
            smooth = np.convolve(loss[:, 1], np.ones(25) / 25, mode="valid") if len(loss) >= 25 else loss[:, 1]
            fig.add_trace(go.Scatter(x=loss[len(loss) - len(smooth):, 0], y=smooth, mode="lines", name=label,
                                     legendgroup=label, line={"color": colour}), 1, 1)
        evals = curves.get("evals") or []
        for col, key in ((2, "fd_digits"), (3, "judge_accuracy")):
            if evals:
                y = [e[key]["value"] for e in evals]
                fig.add_trace(go.Scatter(
                    x=[e["step"] for e in evals], y=y, mode="lines+markers", name=label, legendgroup=label,
                    showlegend=False, line={"color": colour},
                    error_y={"type": "data", "symmetric": False, "array": [e[key]["high"] - v for e, v in zip(evals, y)],
                             "arrayminus": [v - e[key]["low"] for e, v in zip(evals, y)]}), 1, col)
    fig.update_yaxes(type="log", row=1, col=1)
    fig.update_yaxes(type="log", row=1, col=2)
    fig.update_yaxes(range=[0, 1.02], row=1, col=3)
    fig.update_xaxes(title_text="step")
    fig.update_layout(template="plotly_white", height=height, margin={"l": 50, "r": 10, "t": 40, "b": 40},
                      legend={"orientation": "h", "y": -0.3})
    return fig


OP_COLOURS = {"skip_connect": "#7f7f7f", "nor_conv_1x1": "#1f77b4", "nor_conv_3x3": "#d62728",
              "avg_pool_3x3": "#2ca02c", "none": "#dddddd"}


def cell_figure(archs: list[str], titles: list[str] | None = None, columns: int = 4, height: int | None = None):
    """NAS-Bench-201 cells drawn as DAGs: nodes 0..3 left to right, each edge an arc coloured by its
    operation (``none`` edges dotted and faint). One panel per cell."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    from studio.data import nasbench

    columns = max(1, min(columns, len(archs)))
    rows = max(1, -(-len(archs) // columns))
    fig = make_subplots(rows=rows, cols=columns, subplot_titles=titles or None,
                        horizontal_spacing=0.03, vertical_spacing=0.12 / rows)
    shown = set()
    for k, arch in enumerate(archs):
        r, c = k // columns + 1, k % columns + 1
        for (j, i), op in zip(nasbench.EDGES, nasbench.parse(arch)):
            bend = 0.35 * (j - i - 1) * (1 if (i + j) % 2 else -1)  # longer edges arc further
            t = np.linspace(0, 1, 21)
            xs = (1 - t) * i + t * j
            ys = 4 * bend * t * (1 - t)
            fig.add_trace(go.Scatter(
                x=xs, y=ys, mode="lines", name=op, legendgroup=op, showlegend=op not in shown,
                line={"color": OP_COLOURS[op], "width": 1.5 if op == "none" else 3.5,
                      "dash": "dot" if op == "none" else "solid"},
                hovertext=f"{op}: node {i} -> node {j}", hoverinfo="text"), row=r, col=c)
            shown.add(op)
        fig.add_trace(go.Scatter(x=[0, 1, 2, 3], y=[0, 0, 0, 0], mode="markers+text", text=["in", "1", "2", "out"],
                                 textposition="bottom center", marker={"size": 14, "color": "white",
                                                                       "line": {"color": "black", "width": 1.5}},
                                 showlegend=False, hoverinfo="skip"), row=r, col=c)
    fig.update_xaxes(visible=False, range=[-0.3, 3.3])
    fig.update_yaxes(visible=False, range=[-1.3, 1.3])
    fig.update_layout(height=height or 170 * rows + 60, margin={"l": 10, "r": 10, "t": 40, "b": 10},
                      legend={"orientation": "h", "y": -0.02}, plot_bgcolor="white")
    return fig


def space_histogram(space: np.ndarray, marks: dict[str, np.ndarray], title: str, top: float | None = None,
                    height: int = 300):
    """The whole space's accuracies as a histogram, each named set of cells as a rug of ticks, and
    the top-1% threshold ``top`` as a dashed line."""
    import plotly.graph_objects as go

    fig = go.Figure(go.Histogram(x=space, nbinsx=60, name="every cell of the space", marker_color="#c7c7c7"))
    if top is not None:
        fig.add_vline(x=float(top), line_dash="dash", line_color="black", annotation_text="top 1%",
                      annotation_position="top left")
    palette = ("#d62728", "#1f77b4", "#2ca02c", "#9467bd")
    for k, (name, values) in enumerate(marks.items()):
        fig.add_trace(go.Scatter(x=values, y=np.full(len(values), -3.0 - 4 * k), mode="markers", name=name,
                                 marker={"symbol": "line-ns-open", "size": 12, "color": palette[k % len(palette)]}))
    fig.update_layout(title=title, height=height, xaxis_title="validation accuracy", yaxis_title="cells",
                      bargap=0.02, margin={"l": 50, "r": 10, "t": 40, "b": 40}, legend={"orientation": "h", "y": -0.3})
    return fig


def efficiency_chart(curves: dict[str, tuple], target: float | None = None, title: str = "search efficiency",
                     height: int = 320):
    """Best accuracy found vs architectures trained: ``curves[name] = (x, median[, low, high])``."""
    import plotly.graph_objects as go

    fig = go.Figure()
    palette = ("#d62728", "#ff7f0e", "#1f77b4", "#7f7f7f", "#2ca02c")
    for k, (name, curve) in enumerate(curves.items()):
        colour = palette[k % len(palette)]
        x, y = curve[0], curve[1]
        if len(curve) == 4:
            fig.add_trace(go.Scatter(x=np.concatenate([x, x[::-1]]), y=np.concatenate([curve[3], curve[2][::-1]]),
                                     fill="toself", fillcolor=_rgba(colour, 0.15), line={"width": 0},
                                     hoverinfo="skip", showlegend=False, legendgroup=name))
        fig.add_trace(go.Scatter(x=x, y=y, mode="lines", name=name, line={"color": colour, "width": 2},
                                 legendgroup=name))
    if target is not None:
        fig.add_hline(y=target, line_dash="dash", line_color="black", annotation_text="top 1% of the space")
    lowest = min(float(np.min(curve[1])) for curve in curves.values()) if curves else 0.0
    fig.update_yaxes(range=[lowest - 0.02, 1.0 + 0.005])  # the medians, not a band's tail, set the scale
    fig.update_layout(title=title, height=height, xaxis_title="architectures trained", xaxis_type="log",
                      yaxis_title="best validation accuracy so far", margin={"l": 50, "r": 10, "t": 40, "b": 40},
                      legend={"orientation": "h", "y": -0.3})
    return fig


def classify_errors(result, height: int | None = None):
    """A :class:`studio.methods.classify.ClassifyResult` as bars: each candidate's mean denoising error
    (lower = more likely), the answer in green, candidates dropped in an adaptive round greyed out
    (lighter the earlier), the true candidate outlined when the source knows it."""
    import plotly.graph_objects as go

    n_rounds = max([d for d in result.dropped_in if d] or [1])
    colours, labels = [], []
    for c, dropped in enumerate(result.dropped_in):
        if dropped is None:
            colours.append("#2ca02c")
            labels.append("the answer")
        else:
            grey = int(200 - 90 * (dropped - 1) / max(1, n_rounds - 1)) if n_rounds > 1 else 170
            colours.append(f"rgb({grey},{grey},{grey})")
            labels.append(f"dropped in round {dropped}")
    widths = [3 if result.truth == c else 0 for c in range(len(result.candidates))]
    fig = go.Figure(go.Bar(
        x=result.errors, y=result.candidates, orientation="h", marker={"color": colours,
                                                                         "line": {"color": "black", "width": widths}},
        customdata=np.stack([labels, result.evaluations], axis=-1),
        hovertemplate="%{y}: mean error %{x:.4f}<br>%{customdata[0]}, %{customdata[1]} evaluations<extra></extra>"))
    fig.update_layout(height=height or 120 + 26 * len(result.candidates), margin={"l": 10, "r": 10, "t": 40, "b": 40},
                      title=f"Mean denoising error per candidate ({result.evals} network evaluations)",
                      xaxis_title="mean error (lower = more likely)", yaxis={"autorange": "reversed"})
    return fig


def probe_grid(blocks: list[str], timesteps: list[int], accuracy, which: str = "validation",
               best: tuple[str, int] | None = None, height: int = 300):
    """Linear-probe accuracy over (decoder block, t) as a heat map (DDAE / diffssl's grid search):
    blocks on the y axis in forward order, t on the x axis, ``which`` names the digits it was measured
    on (validation or test); ``best`` (block, t) is marked."""
    import plotly.graph_objects as go

    z = np.asarray(accuracy, dtype=float)
    x = [str(t) for t in timesteps]
    fig = go.Figure(go.Heatmap(
        z=z, x=x, y=list(blocks), colorscale="Viridis", colorbar={"title": "accuracy"},
        text=[[f"{v:.2f}" for v in row] for row in z], texttemplate="%{text}",
        hovertemplate="block %{y}, t = %{x}: " + which + " accuracy %{z:.3f}<extra></extra>"))
    if best is not None:
        fig.add_trace(go.Scatter(x=[str(best[1])], y=[best[0]], mode="markers", showlegend=False,
                                 marker={"symbol": "square-open", "size": 34, "color": "red", "line": {"width": 3}},
                                 hovertemplate="the probe: block %{y}, t = %{x}<extra></extra>"))
    fig.update_layout(height=height, margin={"l": 10, "r": 10, "t": 40, "b": 40},
                      title=f"Linear-probe {which} accuracy by decoder block and t",
                      xaxis={"title": "t (noise level, of 1000)", "type": "category"},
                      yaxis={"title": "decoder block (forward order)", "autorange": "reversed", "type": "category"})
    return fig


def _arrows(go, points: np.ndarray, vectors: np.ndarray, spacing: float, colour: str, name: str):
    """A vector field as line segments with arrowheads; lengths compressed (square root of the norm,
    the longest one ``0.9 spacing``) so both slow and fast regions stay readable."""
    norm = np.linalg.norm(vectors, axis=1)
    top = norm.max() if norm.size and norm.max() > 0 else 1.0
    scale = 0.9 * spacing * np.sqrt(norm / top) / np.maximum(norm, 1e-12)
    ends = points + vectors * scale[:, None]
    seg = np.full((len(points) * 3, 2), np.nan)
    seg[0::3], seg[1::3] = points, ends
    angle = 90 - np.degrees(np.arctan2(vectors[:, 1], vectors[:, 0]))
    return [go.Scatter(x=seg[:, 0], y=seg[:, 1], mode="lines", line={"color": colour, "width": 1.2}, name=name,
                       hoverinfo="skip", legendgroup=name),
            go.Scatter(x=ends[:, 0], y=ends[:, 1], mode="markers", showlegend=False, legendgroup=name,
                       marker={"symbol": "triangle-up", "size": 6, "color": colour, "angle": angle},
                       customdata=norm, hovertemplate="|field| = %{customdata:.3g}<extra></extra>")]


def playground(result, height: int = 520):
    """A :class:`studio.methods.theory.PlaygroundResult`: the noised density at the shown time, the chosen
    parametrisation's field as arrows (x0 drawn as the step x0_hat - x), a few particles' paths up to
    the shown time and the particles there."""
    import plotly.graph_objects as go

    p = result.parameters
    kind = p["parametrisation"]
    t = float(result.times[result.shown])
    axis = result.density_axis
    field = result.fields[kind] - (result.grid if kind == "x0" else 0)
    fig = go.Figure(go.Heatmap(x=axis, y=axis, z=np.exp(result.density), colorscale="Blues", showscale=False,
                               hovertemplate="p_t = %{z:.3g}<extra></extra>", name="density"))
    spacing = result.grid[1, 0] - result.grid[0, 0]
    for trace in _arrows(go, result.grid, field, spacing, "#444444", f"{kind} field"):
        fig.add_trace(trace)
    trails = result.states[: result.shown + 1, : int(p.get("trails", 30))]
    if trails.shape[1]:
        xy = np.concatenate([trails, np.full((1, trails.shape[1], 2), np.nan)]).transpose(1, 0, 2).reshape(-1, 2)
        fig.add_trace(go.Scatter(x=xy[:, 0], y=xy[:, 1], mode="lines", name="paths",
                                 line={"color": "rgba(214,39,40,0.45)", "width": 1}, hoverinfo="skip"))
    now = result.states[result.shown]
    fig.add_trace(go.Scatter(x=now[:, 0], y=now[:, 1], mode="markers", name=f"particles at t = {t:.3f}",
                             marker={"size": 4, "color": "#d62728"}, hoverinfo="skip"))
    lim = float(axis[-1])
    fig.update_layout(height=height, template="plotly_white", margin={"l": 10, "r": 10, "t": 40, "b": 10},
                      title=f"{p['distribution']}, {p['process']}, t = {t:.3f}: the {kind} field and the particles",
                      xaxis={"range": [-lim, lim], "constrain": "domain"},
                      yaxis={"range": [-lim, lim], "scaleanchor": "x"}, legend={"orientation": "h", "y": -0.05})
    return fig


def parametrisations(result, height: int = 300):
    """The same field four ways at the shown time: each parametrisation's prediction (x0 as x0_hat - x)
    above, and under each title the largest difference between the velocity it converts to and the
    chosen one's (the conversions of the Principles monograph; float64 round-off when they agree)."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    kinds = list(result.fields)
    chosen = result.velocity_from[result.parameters["parametrisation"]]
    titles = [f"{k}<br><sub>-> velocity: max diff {np.abs(result.velocity_from[k] - chosen).max():.1e}</sub>"
              for k in kinds]
    fig = make_subplots(rows=1, cols=len(kinds), subplot_titles=titles, horizontal_spacing=0.03)
    spacing = result.grid[1, 0] - result.grid[0, 0]
    for i, k in enumerate(kinds, start=1):
        field = result.fields[k] - (result.grid if k == "x0" else 0)
        for trace in _arrows(go, result.grid, field, spacing, "#1f77b4", k):
            trace.showlegend = False
            fig.add_trace(trace, row=1, col=i)
        fig.update_xaxes(showticklabels=False, row=1, col=i)
        fig.update_yaxes(showticklabels=False, scaleanchor=f"x{i if i > 1 else ''}", row=1, col=i)
    fig.update_layout(height=height, template="plotly_white", margin={"l": 10, "r": 10, "t": 70, "b": 10})
    return fig


def explained_curve(curve: dict, space: str = "score", height: int = 360):
    """One model's Gaussian-score diagnostic (``benchmarks/bench_gaussian_score.py``): the explained
    variance of each reference against the noise level, with 95 % intervals, and the 90 % line."""
    import plotly.graph_objects as go

    rows = curve["rows"]
    x = [r["sigma_over_alpha"] for r in rows]
    fig = go.Figure()
    for ref in [k.split("/")[0] for k in rows[0] if k.endswith(f"/{space}")]:
        v = np.array([r[f"{ref}/{space}"] for r in rows])
        fig.add_trace(go.Scatter(x=x, y=v[:, 0], mode="lines+markers", name=ref,
                                 error_y={"type": "data", "symmetric": False, "array": v[:, 2] - v[:, 0],
                                          "arrayminus": v[:, 0] - v[:, 1]}))
    fig.add_hline(y=0.9, line={"dash": "dot", "color": "grey"})
    fig.update_layout(height=height, template="plotly_white", margin={"l": 50, "r": 10, "t": 40, "b": 40},
                      title=f"{curve['model']}: learned {space} explained by closed-form references",
                      xaxis={"title": "noise level sigma / alpha", "type": "log"},
                      yaxis={"title": "explained variance", "range": [-0.5, 1.05]},
                      legend={"orientation": "h", "y": -0.25})
    return fig


WEIGHTS_COLOURS = {"generated": "#d62728", "random": "#7f7f7f", "nearest": "#1f77b4", "zoo": "#2ca02c"}


def weights_histogram(generated, zoo, random, nearest: float | None, nearest_task: str = "", title: str = "",
                      height: int = 320):
    """Accuracies of generated classifiers beside the zoo's own models of the task and random
    initialisations (overlaid histograms, 2.5-point bins on [0, 1]), the nearest seen task's zoo model
    as a dashed line (a :class:`studio.methods.weights.WeightsResult`'s fields)."""
    import plotly.graph_objects as go

    fig = go.Figure()
    for name, values, key in ((f"generated ({len(generated)})", generated, "generated"),
                              (f"the zoo's models of this task ({len(zoo)})", zoo, "zoo"),
                              (f"random initialisations ({len(random)})", random, "random")):
        if len(values):
            fig.add_trace(go.Histogram(x=np.asarray(values), name=name, opacity=0.6, marker_color=WEIGHTS_COLOURS[key],
                                       xbins={"start": 0.0, "end": 1.0001, "size": 0.025}))
    if nearest is not None:
        fig.add_vline(x=float(nearest), line_dash="dash", line_color=WEIGHTS_COLOURS["nearest"],
                      annotation_text=f"nearest seen task's model ({nearest_task})",
                      annotation_position="top right" if nearest < 0.5 else "top left")
    fig.update_layout(title=title, barmode="overlay", height=height, template="plotly_white",
                      xaxis={"title": "accuracy", "range": [0, 1.02]}, yaxis_title="models",
                      margin={"l": 50, "r": 10, "t": 40, "b": 40}, legend={"orientation": "h", "y": -0.3})
    return fig


def finetune_curves(curve: list[dict], total: int, title: str = "fine-tuning on the few examples", height: int = 320):
    """Accuracy against SGD steps for the three starts of the Weights method's fine-tuning (rows of
    ``{"step", "generated", "random", "nearest"}``); the x axis spans the whole run, so it fills live."""
    import plotly.graph_objects as go

    names = {"generated": "best generated model", "random": "random init (training from scratch)",
             "nearest": "nearest seen task's zoo model"}
    steps = [row["step"] for row in curve]
    x = [max(s, 0.5) for s in steps]  # a log axis; the start (step 0) is drawn at 0.5, labelled 0
    ticks = [0.5] + [t for t in (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000) if t <= max(total, 1)]
    fig = go.Figure([go.Scatter(x=x, y=[row[k] for row in curve], mode="lines+markers", name=name,
                                customdata=steps, hovertemplate="step %{customdata}: %{y:.3f}",
                                line={"color": WEIGHTS_COLOURS[k], "width": 2}) for k, name in names.items()])
    fig.update_layout(title=f"{title} ({steps[-1] if steps else 0} / {total} steps)", height=height,
                      template="plotly_white",
                      xaxis={"title": "SGD step (log scale)", "type": "log", "tickvals": ticks,
                             "ticktext": ["0"] + [str(t) for t in ticks[1:]],
                             "range": [np.log10(0.4), np.log10(max(total, 1) * 1.15)]},
                      yaxis={"title": "accuracy", "range": [0, 1.02]}, margin={"l": 50, "r": 10, "t": 40, "b": 40},
                      legend={"orientation": "h", "y": -0.3})
    return fig


def memorisation_scatter(rows: list[dict], spread: float, height: int = 300):
    """Each generated model's distance to its nearest training checkpoint (L2 over the flat weights)
    against their prediction agreement; the median distance between two checkpoints of one task
    (``spread``) and the 99% agreement line mark what a copy would look like."""
    import plotly.graph_objects as go

    fig = go.Figure(go.Scatter(
        x=[r["distance"] for r in rows], y=[r["agreement"] for r in rows], mode="markers",
        marker={"color": [r["accuracy"] for r in rows], "colorscale": "Viridis", "cmin": 0, "cmax": 1, "size": 9,
                "colorbar": {"title": "accuracy", "thickness": 12}},
        text=[f"model {r['model']}: nearest {r['its_task']} #{r['nearest_checkpoint']}" for r in rows],
        hovertemplate="%{text}<br>distance %{x:.3f}, agreement %{y:.3f}<extra></extra>"))
    fig.add_vline(x=float(spread), line_dash="dash", line_color="black",
                  annotation_text="two checkpoints of one task", annotation_position="bottom right")
    fig.add_hline(y=0.99, line_dash="dot", line_color="grey", annotation_text="99% agreement",
                  annotation_position="bottom left")
    fig.update_layout(title="Memorisation: nearest training checkpoint", height=height, template="plotly_white",
                      xaxis={"title": "L2 distance to it", "rangemode": "tozero"},
                      yaxis={"title": "prediction agreement", "range": [0, 1.02]},
                      margin={"l": 50, "r": 10, "t": 40, "b": 40})
    return fig


DEBIAS_COLOURS = {"biased": "#7f7f7f", "debiased": "#2ca02c"}


def colour_histograms(readouts: dict[str, dict], labels: dict[str, str], title: str = "", height: int = 300):
    """Side-by-side bars: how many images of each model the judge reads in each colour of the world, and
    "no such shape" (``readouts``: name -> :func:`studio.core.invdiff.colour_readout`'s dict)."""
    import plotly.graph_objects as go

    fig = go.Figure()
    for name, rd in readouts.items():
        x = [*rd["counts"], "no such shape"]
        y = [*rd["counts"].values(), rd["missing"]]
        score = rd["bias_score"]
        fig.add_trace(go.Bar(x=x, y=y, name=labels.get(name, name) + (f" (bias {score:.2f})" if score is not None else ""),
                             marker_color=DEBIAS_COLOURS.get(name)))
    fig.update_layout(title=title, barmode="group", height=height, template="plotly_white", yaxis_title="images",
                      xaxis_title="colour the judge reads", margin={"l": 50, "r": 10, "t": 40, "b": 40},
                      legend={"orientation": "h", "y": -0.35})
    return fig
