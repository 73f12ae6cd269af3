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
