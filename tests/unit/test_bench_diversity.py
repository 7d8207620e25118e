"""The diversity bench's plot: point labels never overlap each other or a marker, and stay in the plot."""

from __future__ import annotations

import itertools

import pytest

from tests.bench_modules import load_bench


@pytest.fixture(scope="module")
def bench():  # type: ignore[no-untyped-def]
    return load_bench("bench_diversity")


def _overlap(a: tuple[float, ...], b: tuple[float, ...]) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def test_labels_of_crowded_points_do_not_overlap(bench) -> None:  # type: ignore[no-untyped-def]
    # Two series of six knob values, the accuracy nearly flat: the points crowd on one line.
    points = [(100.0 + 6 * i, 200.0 + (i % 2)) for i in range(6)] + [(160.0 + 9 * i, 201.0) for i in range(6)]
    labels = [f"λ={v:g}" for v in (0, 0.1, 0.3, 0.5, 0.7, 0.9)] * 2
    bounds = (70.0, 30.0, 450.0, 365.0)
    corners = bench.place_labels(points, labels, bounds)
    boxes = [(x, y, x + 6.5 * len(t), y + 12.0) for (x, y), t in zip(corners, labels, strict=True)]
    markers = [(x - 5, y - 5, x + 5, y + 5) for x, y in points]
    for a, b in itertools.combinations(boxes, 2):
        assert not _overlap(a, b)
    for box in boxes:
        assert not any(_overlap(box, m) for m in markers)
        assert bounds[0] <= box[0] and box[2] <= bounds[2] and bounds[1] <= box[1] and box[3] <= bounds[3]
