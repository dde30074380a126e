"""course_lib.explorer: every grid point has a frame, identical points share one, the HTML offers
each control's values and starts on the default frame, bad grids are rejected."""

import json
import re

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402

from course_lib import explorer  # noqa: E402

CALLS = []


def render(a, b):
    CALLS.append((a, b))
    fig, ax = plt.subplots(figsize=(1, 1))
    ax.set_title(f"{a} {b}")
    return fig


def test_every_grid_point_has_a_frame_and_canonical_points_share_one():
    CALLS.clear()
    controls = {"a": [1, 2, 3], "b": ["x", "y"]}
    frames, index = explorer.precompute(render, controls, canonical=lambda a, b: (a, b if a == 1 else None))
    assert set(index) == {explorer.frame_key([a, b]) for a in (1, 2, 3) for b in ("x", "y")}
    assert len(frames) == len(CALLS) == 4                 # (1,x), (1,y), (2,·), (3,·)
    assert index[explorer.frame_key([2, "x"])] == index[explorer.frame_key([2, "y"])]
    assert index[explorer.frame_key([1, "x"])] != index[explorer.frame_key([1, "y"])]


def test_html_offers_the_values_and_starts_on_the_default_frame():
    controls = {"a": [0.5, 1.0, 2.0], "b": ["x", "y"]}
    frames, index = explorer.precompute(render, controls)
    page = explorer.explorer_html(frames, index, controls, default={"a": 1.0, "b": "y"})
    assert 'type="range"' in page and "<select" in page
    assert re.search(r'value="1"', page)                 # slider at position of 1.0
    assert re.search(r'<option value="&quot;y&quot;" selected>', page)
    start = frames[index[explorer.frame_key([1.0, "y"])]]
    assert re.search(r'<img[^>]*src="data:image/png;base64,' + re.escape(start) + '"', page)
    table = json.loads(re.search(r"var index = (\{.*?\});", page)[1])
    assert table == dict(index)


def test_frame_key_is_what_the_script_joins():
    # the script joins the JSON texts of the option values with '|'
    assert explorer.frame_key([0.05, "top-k", 8]) == '0.05|"top-k"|8'


@pytest.mark.parametrize(("controls", "default", "error"), [
    ({}, {}, ValueError),
    ({"a": []}, {}, ValueError),
    ({"a": "abc"}, {}, ValueError),
    ({"a b": [1]}, {}, ValueError),
    ({"a": [1, 1]}, {}, ValueError),
    ({"a": [[1]]}, {}, TypeError),
    ({"a": [True, False]}, {}, TypeError),
    ({"a": [1, 2]}, {"b": 1}, ValueError),
    ({"a": [1, 2]}, {"a": 3}, ValueError),
])
def test_bad_grids_are_rejected(controls, default, error):
    with pytest.raises(error):
        explorer.static_explorer(render, controls, default)


def test_render_must_return_a_figure():
    with pytest.raises(TypeError):
        explorer.precompute(lambda a: None, {"a": [1]})
