"""The dataVisualization node: passthrough plus the editor's widget spec, and on request the chart
rendered to a PNG (matplotlib, headless) stored under IMAGE_DIR, served by `api.routes.images`."""

import asyncio
import io
import math
import os
import re
import struct
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import AliasChoices, Field

from config import Settings
from errors import NodeConfigError, NodeExecutionError
from tasks.context import RunContext
from tasks.registry import Envelope, NodeConfig, envelope, node
from tasks.values import json_text

CHART_TYPES = ("bar", "line", "area", "pie", "donut", "scatter")
_TYPE_ALIASES = {"doughnut": "donut", "column": "bar"}
MAX_POINTS = 10_000
MAX_TICKS = 16
NOT_CONFIGURED = "Visualization not configured - configure the visualization in the editor"
_SAFE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
_RENDER_LOCK = threading.Lock()  # matplotlib is not thread-safe; renders are short


def safe_id(value: str) -> bool:
    """True when `value` can be used as part of a file name (no separators, no `..`)."""
    return bool(_SAFE_ID.fullmatch(value)) and ".." not in value


def image_path(settings: Settings, execution_id: str, node_id: str) -> Path | None:
    """Where the PNG of a node's run is stored; None when an id is not a safe file-name part."""
    if not (safe_id(execution_id) and safe_id(node_id)):
        return None
    return Path(settings.IMAGE_DIR).expanduser().resolve() / f"{execution_id}_{node_id}.png"


def image_url(execution_id: str, node_id: str) -> str:
    return f"/api/executions/{execution_id}/images/{node_id}.png"


class VisualizationConfig(NodeConfig):
    prompt: str | None = Field(default=None, validation_alias=AliasChoices("visualizationPrompt"))
    widget: Any = Field(default=None, validation_alias=AliasChoices("generatedWidget"))
    render_image: bool = Field(default=False, validation_alias=AliasChoices("renderImage"))
    image_format: str = Field(default="png", validation_alias=AliasChoices("imageFormat"))
    width: int = Field(default=800, validation_alias=AliasChoices("imageWidth"))
    height: int = Field(default=500, validation_alias=AliasChoices("imageHeight"))


@dataclass(frozen=True)
class Chart:
    """A validated widget spec with its data pulled out as plain lists."""

    type: str
    title: str
    x_key: str
    labels: list[Any]
    series: dict[str, list[float]]
    colors: list[str] | None


def _widget(raw: Any) -> dict[str, Any] | None:
    if raw in (None, "", {}):
        return None
    raw = json_text(raw, "generatedWidget must be a JSON object (chart spec)")
    if not isinstance(raw, dict):
        raise NodeConfigError("generatedWidget must be an object (chart spec)")
    return raw


def _records(widget: dict[str, Any], data: Any) -> list[dict[str, Any]]:
    """`widget.data` when it has rows, else the node input (an object counts as one record)."""
    own = widget.get("data")
    if own not in (None, []) and not isinstance(own, list):
        raise NodeConfigError("generatedWidget.data must be a list of records")
    rows, where = (own, "generatedWidget.data") if own else (data, "input")
    if isinstance(rows, dict):
        rows = [rows]
    if not isinstance(rows, list) or not rows:
        raise NodeConfigError(
            "Nothing to plot: generatedWidget.data is empty and the node input has no records"
        )
    if len(rows) > MAX_POINTS:
        raise NodeConfigError(
            f"Too many records to plot ({len(rows)} in {where}; at most {MAX_POINTS})"
        )
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise NodeConfigError(f"{where}[{i}] must be an object (a record), got {row!r:.60}")
    return rows


def _number(value: Any, field: str, key: str, index: int) -> float:
    if value is None or value == "":
        return math.nan
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    try:
        if isinstance(value, str):
            return float(value.strip())
    except ValueError:
        pass
    raise NodeConfigError(f"{field} {key!r}: record {index} has a non-numeric value {value!r:.60}")


def _key(widget: dict[str, Any], field: str, kind: str, rows: list[dict[str, Any]]) -> str:
    key = widget.get(field)
    if key in (None, ""):
        raise NodeConfigError(f"generatedWidget.{field} is required for a {kind} chart")
    if not isinstance(key, str):
        raise NodeConfigError(f"generatedWidget.{field} must be a field name (string)")
    if not any(key in row for row in rows):
        fields = ", ".join(dict.fromkeys(k for row in rows[:50] for k in row)) or "none"
        raise NodeConfigError(
            f"generatedWidget.{field} {key!r} is not a field of the data (fields: {fields})"
        )
    return key


def parse_chart(widget: dict[str, Any], data: Any) -> Chart:
    """Validate the widget spec against its data; every problem names the offending field."""
    raw_type = str(widget.get("type") or "").strip().lower()
    kind = _TYPE_ALIASES.get(raw_type, raw_type)
    if kind not in CHART_TYPES:
        raise NodeConfigError(
            f"generatedWidget.type must be one of {', '.join(CHART_TYPES)} "
            f"(got {widget.get('type')!r})"
        )
    rows = _records(widget, data)
    x_field = "nameKey" if kind in ("pie", "donut") and not widget.get("xAxisKey") else "xAxisKey"
    x_key = _key(widget, x_field, kind, rows)
    keys = widget.get("dataKeys")
    if keys not in (None, []):
        if not isinstance(keys, list) or not all(isinstance(k, str) and k for k in keys):
            raise NodeConfigError("generatedWidget.dataKeys must be a list of field names")
        y_keys = [_key({"dataKeys": k}, "dataKeys", kind, rows) for k in keys]
    else:
        y_keys = [_key(widget, "dataKey", kind, rows)]
    if kind in ("pie", "donut"):
        y_keys = y_keys[:1]
    field = "generatedWidget.dataKeys" if widget.get("dataKeys") else "generatedWidget.dataKey"
    series = {k: [_number(r.get(k), field, k, i) for i, r in enumerate(rows)] for k in y_keys}
    labels: list[Any] = [r.get(x_key) for r in rows]
    if kind == "scatter":
        labels = [_number(v, f"generatedWidget.{x_field}", x_key, i) for i, v in enumerate(labels)]
    if kind in ("pie", "donut"):
        values = series[y_keys[0]]
        if any(math.isnan(v) or v < 0 for v in values) or sum(values) <= 0:
            raise NodeConfigError(
                f"{field} {y_keys[0]!r}: a {kind} chart needs non-negative "
                "numbers with a positive total"
            )
    title = str(widget.get("title") or "")
    return Chart(kind, title, x_key, labels, series, _colors(widget.get("colors")))


def _colors(raw: Any) -> list[str] | None:
    if raw in (None, "", []):
        return None
    colors = [raw] if isinstance(raw, str) else raw
    if not isinstance(colors, list) or not all(isinstance(c, str) for c in colors):
        raise NodeConfigError("generatedWidget.colors must be a list of colors (e.g. '#8884d8')")
    from matplotlib.colors import is_color_like

    bad = [c for c in colors if not is_color_like(c)]
    if bad:
        raise NodeConfigError(f"generatedWidget.colors: {bad[0]!r} is not a color")
    return colors


def _draw(chart: Chart, ax: Any) -> None:
    colors = chart.colors or [f"C{i}" for i in range(10)]
    names = list(chart.series)
    if chart.type in ("pie", "donut"):
        values = chart.series[names[0]]
        wedge = {"width": 0.4} if chart.type == "donut" else None
        ax.pie(
            values,
            labels=[str(v) for v in chart.labels],
            autopct="%1.1f%%",
            colors=[colors[i % len(colors)] for i in range(len(values))],
            wedgeprops=wedge,
            pctdistance=0.8 if wedge else 0.6,
        )
        ax.axis("equal")
        return
    positions = list(range(len(chart.labels)))
    for i, name in enumerate(names):
        color, values = colors[i % len(colors)], chart.series[name]
        if chart.type == "bar":
            width = 0.8 / len(names)
            offset = (i - (len(names) - 1) / 2) * width
            ax.bar([p + offset for p in positions], values, width, label=name, color=color)
        elif chart.type == "line":
            ax.plot(
                positions,
                values,
                marker="o" if len(positions) <= 50 else None,
                label=name,
                color=color,
            )
        elif chart.type == "area":
            ax.fill_between(positions, values, alpha=0.35, color=color)
            ax.plot(positions, values, label=name, color=color)
        else:
            ax.scatter(chart.labels, values, label=name, color=color)
    if chart.type != "scatter":
        step = max(1, math.ceil(len(positions) / MAX_TICKS))
        ax.set_xticks(
            positions[::step],
            [str(v) for v in chart.labels][::step],
            rotation=45 if len(positions) > 8 else 0,
            ha="right" if len(positions) > 8 else "center",
        )
    ax.set_xlabel(chart.x_key)
    if len(names) == 1:
        ax.set_ylabel(names[0])
    else:
        ax.legend()
    ax.grid(True, alpha=0.3)


def render_png(chart: Chart, width: int, height: int) -> bytes:
    """Draw `chart` on a headless Agg canvas of width x height pixels; returns the PNG bytes."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    with _RENDER_LOCK:
        fig = Figure(figsize=(width / 100, height / 100), dpi=100, layout="tight")
        ax = fig.add_subplot()
        _draw(chart, ax)
        if chart.title:
            ax.set_title(chart.title)
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=100)
    return buffer.getvalue()


def _write(path: Path, png: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    tmp.write_bytes(png)
    os.replace(tmp, path)


def _render_and_store(
    widget: dict[str, Any],
    data: Any,
    config: VisualizationConfig,
    path: Path,
    abandoned: threading.Event,
) -> tuple[int, int, int]:
    png = render_png(parse_chart(widget, data), config.width, config.height)
    if not abandoned.is_set():  # a render that outlived its timeout stores nothing
        _write(path, png)
    width, height = struct.unpack(">II", png[16:24])
    return width, height, len(png)


async def render_in_thread(
    widget: dict[str, Any], data: Any, config: VisualizationConfig, path: Path, timeout_s: float
) -> tuple[int, int, int]:
    """`_render_and_store` off the event loop; past `timeout_s` (CHART_RENDER_TIMEOUT_S) the
    node fails naming the limit (the thread finishes its drawing but writes no file)."""
    abandoned = threading.Event()
    try:
        async with asyncio.timeout(timeout_s):
            return await asyncio.to_thread(_render_and_store, widget, data, config, path, abandoned)
    except TimeoutError:
        abandoned.set()
        raise NodeExecutionError(
            f"Chart rendering took longer than {timeout_s:g} s (CHART_RENDER_TIMEOUT_S)"
        ) from None


@node("dataVisualization", config=VisualizationConfig, timeout_s=120)
async def data_visualization(config: VisualizationConfig, data: Any, ctx: RunContext) -> Envelope:
    """Passthrough with extras `widget` and `prompt`; with `renderImage` also extra `image`."""
    widget = _widget(config.widget)
    if widget is None:
        message = NOT_CONFIGURED
    else:
        message = f"Visualization: {widget.get('title') or widget.get('type') or 'Untitled'}"
    extras: dict[str, Any] = {"widget": config.widget, "prompt": config.prompt}
    if config.render_image:
        if widget is None:
            raise NodeConfigError(
                "renderImage needs a chart spec: generatedWidget is not "
                "configured (configure the visualization in the editor)"
            )
        if config.image_format.strip().lower() != "png":
            raise NodeConfigError(f"imageFormat must be 'png' (got {config.image_format!r})")
        for name, value in (("imageWidth", config.width), ("imageHeight", config.height)):
            if not 100 <= value <= 4000:
                raise NodeConfigError(f"{name} must be between 100 and 4000 pixels (got {value})")
        path = image_path(ctx.settings, ctx.execution_id, ctx.node_id)
        if path is None:
            raise NodeConfigError(
                f"Node id {ctx.node_id!r} cannot name an image file (use "
                "letters, digits, '_', '-' and '.')"
            )
        timeout_s = ctx.settings.CHART_RENDER_TIMEOUT_S
        width, height, size = await render_in_thread(widget, data, config, path, timeout_s)
        extras["image"] = {
            "url": image_url(ctx.execution_id, ctx.node_id),
            "width": width,
            "height": height,
            "bytes": size,
        }
    return envelope(message, data, **extras)
