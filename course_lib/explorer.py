"""Explorers that respond on the static website: every frame precomputed, switched in the browser.

An ipywidgets explorer re-runs Python on each move of a control, so on the built book (no kernel)
its controls move and its plot never changes. ``static_explorer`` renders the plot once for every
point of a small control grid, embeds the frames as PNG images in one HTML output, and a few lines
of plain JavaScript show the frame of the current control values: it needs no kernel and no
widget manager, in the book or in a notebook. The chapters keep their ipywidgets version for a
live notebook (tagged ``remove-cell``, so the site shows only the static one).

Chapters: book/fast/formats, book/foundations/activations, book/brain/sparse_coding
"""

from __future__ import annotations

import base64
import html
import io
import itertools
import json
import uuid
from collections.abc import Callable, Mapping, Sequence
from numbers import Number

import matplotlib.pyplot as plt
from IPython.display import HTML


def frame_key(values: Sequence) -> str:
    """The key of one point of the control grid: its values' JSON texts joined by '|'.

    JavaScript builds the same string from the option values of the controls."""
    return "|".join(json.dumps(v) for v in values)


def _png(fig, dpi: int) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _check_controls(controls: Mapping[str, Sequence], default: Mapping) -> None:
    if not controls:
        raise ValueError("an explorer needs at least one control")
    for name, values in controls.items():
        if not isinstance(name, str) or not name.isidentifier():
            raise ValueError(f"control names must be identifiers, got {name!r}")
        if isinstance(values, (str, bytes)) or len(values) == 0:
            raise ValueError(f"control {name!r} needs a non-empty list of values, got {values!r}")
        if len({json.dumps(v) for v in values}) != len(values):
            raise ValueError(f"control {name!r} has repeated values: {list(values)}")
        for v in values:
            if not isinstance(v, (str, Number)) or isinstance(v, bool):
                raise TypeError(f"control {name!r}: values must be numbers or strings, got {v!r}")
    unknown = set(default) - set(controls)
    if unknown:
        raise ValueError(f"default names unknown controls: {sorted(unknown)}")
    for name, v in default.items():
        if json.dumps(v) not in {json.dumps(x) for x in controls[name]}:
            raise ValueError(f"default {name}={v!r} is not one of the control's values")


def precompute(render: Callable[..., plt.Figure], controls: Mapping[str, Sequence], *,
               canonical: Callable[..., tuple] | None = None, dpi: int = 72):
    """Render every point of the grid: returns (frames, index), ``index[frame_key(values)]`` the
    position in ``frames`` (base64 PNGs) of the frame for those control values.

    ``canonical(**values)`` maps grid points that must look the same to one key (e.g. a
    threshold that only one of several activations uses), so each distinct frame is rendered once.
    """
    names = list(controls)
    frames, index, seen = [], {}, {}
    for values in itertools.product(*(controls[n] for n in names)):
        kwargs = dict(zip(names, values))
        ident = canonical(**kwargs) if canonical else tuple(values)
        if ident not in seen:
            fig = render(**kwargs)
            if not isinstance(fig, plt.Figure):
                raise TypeError(f"render must return a matplotlib Figure, got {type(fig).__name__}")
            seen[ident] = len(frames)
            frames.append(_png(fig, dpi))
        index[frame_key(values)] = seen[ident]
    return frames, index


def explorer_html(frames: Sequence[str], index: Mapping[str, int], controls: Mapping[str, Sequence],
                  default: Mapping | None = None) -> str:
    """The HTML of a precomputed explorer: one control per entry of ``controls`` (a range slider
    for more than two numbers, else a drop-down), the frame of ``default``, and the script that
    swaps the image."""
    default = dict(default or {})
    _check_controls(controls, default)
    start = [default.get(n, values[0]) for n, values in controls.items()]
    if frame_key(start) not in index:
        raise ValueError(f"no frame for the default values {start}")
    uid = "explorer-" + uuid.uuid4().hex[:10]
    parts = [f'<div class="static-explorer" id="{uid}">', '<div style="margin-bottom:0.4em">']
    for (name, values), first in zip(controls.items(), start):
        keys = [json.dumps(v) for v in values]
        pos = keys.index(json.dumps(first))
        label = f'<label style="margin-right:1.2em">{html.escape(name)} '
        if len(values) > 2 and all(isinstance(v, Number) for v in values):
            parts.append(
                f'{label}<input type="range" data-name="{html.escape(name)}" min="0" '
                f'max="{len(values) - 1}" step="1" value="{pos}" '
                f"data-values='{html.escape(json.dumps(keys))}'> "
                f'<output>{html.escape(str(first))}</output></label>')
        else:
            options = "".join(
                f'<option value="{html.escape(k)}"{" selected" if i == pos else ""}>'
                f"{html.escape(str(v))}</option>" for i, (k, v) in enumerate(zip(keys, values)))
            parts.append(f'{label}<select data-name="{html.escape(name)}">{options}</select></label>')
    parts.append("</div>")
    parts.append(f'<img style="max-width:100%" alt="explorer frame" '
                 f'src="data:image/png;base64,{frames[index[frame_key(start)]]}">')
    parts.append("</div>")
    parts.append(f"""<script>
(function () {{
  var root = document.getElementById("{uid}");
  var frames = {json.dumps(list(frames))};
  var index = {json.dumps(dict(index))};
  var controls = root.querySelectorAll("input, select");
  function value(c) {{
    if (c.tagName === "SELECT") return c.value;
    return JSON.parse(c.dataset.values)[Number(c.value)];
  }}
  function update() {{
    controls.forEach(function (c) {{
      if (c.tagName === "INPUT") c.nextElementSibling.textContent = JSON.parse(value(c));
    }});
    var key = Array.prototype.map.call(controls, value).join("|");
    root.querySelector("img").src = "data:image/png;base64," + frames[index[key]];
  }}
  controls.forEach(function (c) {{
    c.addEventListener("input", update);
    c.addEventListener("change", update);
  }});
}})();
</script>""")
    return "\n".join(parts)


def static_explorer(render: Callable[..., plt.Figure], controls: Mapping[str, Sequence],
                    default: Mapping | None = None, *, canonical: Callable[..., tuple] | None = None,
                    dpi: int = 72) -> HTML:
    """Precompute ``render(**values)`` over the control grid and return the explorer as HTML
    (display it as a cell's last expression)."""
    _check_controls(controls, dict(default or {}))
    frames, index = precompute(render, controls, canonical=canonical, dpi=dpi)
    return HTML(explorer_html(frames, index, controls, default))
