"""ECharts options built on the server as plain JSON (labels already translated); the page only draws them.

No functions in the options (they must survive JSON), so click targets travel next to the option and
interval whiskers are drawn as candlesticks whose box runs from the low to the high bound.
"""

from __future__ import annotations

TOOLTIP = {"trigger": "item"}


def bar_chart(categories: list[str], values: list[float], series_name: str, extra: list[str] | None = None) -> dict:
    """One series of bars; `extra` becomes a second label line under each bar (e.g. the change)."""
    labels = [f"{name}\n{note}" if note else name for name, note in zip(categories, extra or [""] * len(categories))]
    return {
        "tooltip": {"trigger": "axis"},
        "grid": {"left": 50, "right": 20, "top": 20, "bottom": 60},
        "xAxis": {"type": "category", "data": labels, "axisLabel": {"interval": 0}},
        "yAxis": {"type": "value"},
        "series": [{"type": "bar", "name": series_name, "data": values, "label": {"show": True, "position": "top"}}],
    }


def rf_heatmap(grid: list[dict], axis_names: tuple[str, str], size: int, labels: dict[str, str]) -> dict:
    """The R x F grid: colour by customers, each cell labelled with its count and average spend."""
    data = []
    for cell in grid:
        text = f"{cell['customers']}\n{labels['avg']} {cell['avg_monetary']:.0f}"
        data.append({"value": [cell["f"] - 1, cell["r"] - 1, cell["customers"]], "avg": cell["avg_monetary"],
                     "r": cell["r"], "f": cell["f"], "label": {"show": True, "formatter": text}})
    peak = max((cell["customers"] for cell in grid), default=1)
    return {
        "tooltip": {"position": "top"},
        "grid": {"left": 60, "right": 20, "top": 10, "bottom": 90},
        "xAxis": {"type": "category", "name": axis_names[0], "nameLocation": "middle", "nameGap": 28,
                  "data": [str(value) for value in range(1, size + 1)], "splitArea": {"show": True}},
        "yAxis": {"type": "category", "name": axis_names[1], "nameLocation": "middle", "nameGap": 35,
                  "data": [str(value) for value in range(1, size + 1)], "splitArea": {"show": True}},
        "visualMap": {"min": 0, "max": peak, "calculable": True, "orient": "horizontal", "left": "center",
                      "bottom": 0, "inRange": {"color": ["#f0f9e8", "#7bccc4", "#0868ac"]}},
        "series": [{"type": "heatmap", "name": labels["customers"], "data": data,
                    "emphasis": {"itemStyle": {"shadowBlur": 8, "shadowColor": "rgba(0,0,0,0.4)"}}}],
    }


def funnel_chart(stages: list[str], values: list[int], series_name: str) -> dict:
    """The lifecycle funnel, stages in the order given (not re-sorted by size)."""
    return {
        "tooltip": TOOLTIP,
        "series": [{
            "type": "funnel", "name": series_name, "sort": "none", "left": "10%", "width": "80%", "gap": 2,
            "minSize": "8%", "label": {"show": True, "position": "inside", "formatter": "{b}: {c}"},
            "data": [{"name": stage, "value": value} for stage, value in zip(stages, values)],
        }],
    }


def sankey_chart(moves: list[dict], label_of, suffixes: tuple[str, str]) -> dict:
    """Flows from the old run's values (left) to the new run's (right); a node per value and side."""
    nodes: dict[str, dict] = {}
    links = []
    for move in moves:
        source = f"{move['from']} {suffixes[0]}"
        target = f"{move['to']} {suffixes[1]}"
        nodes.setdefault(source, {"name": source, "label": {"formatter": label_of(move["from"])}})
        nodes.setdefault(target, {"name": target, "label": {"formatter": label_of(move["to"])}})
        links.append({"source": source, "target": target, "value": move["customers"],
                      "from_value": move["from"], "to_value": move["to"]})
    return {
        "tooltip": {"trigger": "item", "triggerOn": "mousemove"},
        "series": [{"type": "sankey", "data": list(nodes.values()), "links": links, "nodeAlign": "justify",
                    "emphasis": {"focus": "adjacency"}, "lineStyle": {"color": "gradient", "curveness": 0.5},
                    "left": 20, "right": 90}],
    }


def interval_chart(names: list[str], points: list[float | None], intervals: list[tuple], labels: dict) -> dict:
    """Points with 95 % intervals (as percentages), plus a zero line; used for rates and the uplift."""
    percent = [None if point is None else round(point * 100, 2) for point in points]
    boxes = [
        [round(low * 100, 2), round(high * 100, 2), round(low * 100, 2), round(high * 100, 2)]
        if low is not None and high is not None else "-"
        for low, high in intervals
    ]
    return {
        "tooltip": {"trigger": "axis"},
        "legend": {"data": [labels["point"], labels["interval"]], "bottom": 0},
        "grid": {"left": 60, "right": 30, "top": 40, "bottom": 50},
        "xAxis": {"type": "category", "data": names},
        "yAxis": {"type": "value", "name": "%", "scale": True},
        "series": [
            {"type": "candlestick", "name": labels["interval"], "data": boxes, "barWidth": 14,
             "itemStyle": {"color": "#9ecae1", "color0": "#9ecae1", "borderColor": "#3182bd",
                           "borderColor0": "#3182bd"},
             "markLine": {"symbol": "none", "data": [{"yAxis": 0}], "lineStyle": {"type": "dashed"}}},
            {"type": "scatter", "name": labels["point"], "data": percent, "symbolSize": 14,
             "itemStyle": {"color": "#de2d26"}, "label": {"show": True, "position": "right", "formatter": "{c} %"}},
        ],
    }


def stacked_steps(run_labels: list[str], steps: dict[str, list[float]], axis_name: str) -> dict:
    """Per-step seconds of each run, one stacked bar per run."""
    return {
        "tooltip": {"trigger": "axis", "axisPointer": {"type": "shadow"}},
        "legend": {"type": "scroll", "bottom": 0},
        "grid": {"left": 60, "right": 20, "top": 40, "bottom": 70},
        "xAxis": {"type": "category", "data": run_labels, "axisLabel": {"rotate": 20}},
        "yAxis": {"type": "value", "name": axis_name},
        "series": [{"type": "bar", "stack": "seconds", "name": name, "data": values}
                   for name, values in steps.items()],
    }


def metric_lines(run_labels: list[str], lines: dict[str, list[float | None]]) -> dict:
    """Model metrics over runs against the popularity baseline (dashed)."""
    series = []
    for name, values in lines.items():
        dashed = name.endswith("*")
        series.append({"type": "line", "name": name.rstrip("*"), "data": values, "connectNulls": True,
                       "lineStyle": {"type": "dashed" if dashed else "solid"}, "symbolSize": 8})
    return {
        "tooltip": {"trigger": "axis"},
        "legend": {"bottom": 0},
        "grid": {"left": 60, "right": 20, "top": 20, "bottom": 70},
        "xAxis": {"type": "category", "data": run_labels, "axisLabel": {"rotate": 20}},
        "yAxis": {"type": "value", "min": 0},
        "series": series,
    }
