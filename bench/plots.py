"""The pictures in bench/RESULTS.md, drawn with matplotlib from the benchmarks' raw JSON.

A plot appears where a picture reads better than a table:

* mirror: records mirrored per second against the rate the application
  offered, for dynashift and the naive handler, with the engine's raw ceiling;
  beside it, the lag distribution (p50 / p95 / p99) at each rate;
* backfill: each copy's resident memory over time (`rss_samples`), which is
  what "peak RSS does not grow with the data" looks like;
* cutover: the freeze window of every switch, coloured by outcome, against
  the 3 s target.

Each function takes a benchmark's report (the JSON it wrote) and a path, and
draws only what that report holds; it returns False when there is nothing
to draw (an older report without the data). Files go to bench/plots/, next to
RESULTS.md, which links them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # after the backend is chosen
from matplotlib.patches import Patch

FREEZE_TARGET_S = 3.0
OUTCOME_COLOURS = {"switched": "tab:green", "aborted": "tab:orange", "refused": "tab:gray"}


def _save(figure: Any, path: Path) -> bool:
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return True


def mirror(report: dict[str, Any], path: Path) -> bool:
    rows = (report.get("summary") or {}).get("rows") or []
    if not rows:
        return False
    figure, (rate_axis, lag_axis) = plt.subplots(1, 2, figsize=(11, 4))
    for handler, marker in (("dynashift", "o"), ("naive", "s")):
        mine = sorted((r for r in rows if r["handler"] == handler), key=lambda r: r["target_rate"])
        if not mine:
            continue
        offered = [r["target_rate"] for r in mine]
        rate_axis.plot(offered, [r["mirrored_per_s"]["median"] for r in mine], marker=marker, label=handler)
        if handler == "dynashift":
            for key, style in (("p50_ms", ":"), ("p95_ms", "--"), ("p99_ms", "-")):
                lag_axis.plot(offered, [r[key]["median"] / 1000 for r in mine], style, marker=marker,
                              label=f"dynashift {key[:3]}")
        else:
            lag_axis.plot(offered, [r["p99_ms"]["median"] / 1000 for r in mine], "-", marker=marker,
                          label="naive p99", alpha=0.6)
    ceiling = ((report.get("summary") or {}).get("ceiling") or {}).get("puts_per_s")
    if ceiling:
        rate_axis.axhline(ceiling["median"], color="tab:red", linestyle="--", label="engine ceiling (raw puts/s)")
    rate_axis.set(xlabel="application writes/s offered", ylabel="records mirrored/s",
                  title="Mirror throughput (medians)")
    lag_axis.set(xlabel="application writes/s offered", ylabel="lag, write to applied (s)",
                 title="Mirror lag distribution", yscale="log")
    rate_axis.legend(fontsize=8)
    lag_axis.legend(fontsize=8)
    return _save(figure, path)


def backfill_memory(report: dict[str, Any], path: Path) -> bool:
    runs = [r for r in report.get("runs") or [] if r.get("rss_samples")]
    if not runs:
        return False
    figure, axis = plt.subplots(figsize=(8, 4))
    for run in runs:
        samples = run["rss_samples"]
        label = f"{run['scenario']} ({run.get('items', run.get('source_items', 0)):,} items)"
        axis.plot([t for t, _ in samples], [mb for _, mb in samples], label=label)
    axis.axhline(250, color="tab:red", linestyle="--", label="target: 250 MB")
    axis.set(xlabel="seconds into the copy", ylabel="resident memory (MB)", title="Backfill: memory over time",
             ylim=(0, 300))
    axis.legend(fontsize=8)
    return _save(figure, path)


def cutover(report: dict[str, Any], path: Path) -> bool:
    runs = report.get("runs") or []
    if not runs:
        return False
    figure, axis = plt.subplots(figsize=(8, 3.5))
    labels = [f"{r['op']} {r['cycle'] + 1}" for r in runs]
    heights = [r.get("freeze_window_s") or 0.0 for r in runs]
    colours = [OUTCOME_COLOURS.get(r.get("outcome", ""), "tab:blue") for r in runs]
    axis.bar(range(len(runs)), heights, color=colours)
    axis.axhline(FREEZE_TARGET_S, color="tab:red", linestyle="--", label=f"target: {FREEZE_TARGET_S:g} s")
    axis.set_xticks(range(len(runs)), labels, rotation=45, ha="right", fontsize=8)
    rate = (report.get("config") or {}).get("rate")
    axis.set(ylabel="freeze window (s)",
             title=f"Cutover: freeze window per switch{f' at {rate:g} writes/s offered' if rate else ''}")
    handles, _ = axis.get_legend_handles_labels()
    handles += [Patch(color=colour, label=outcome) for outcome, colour in OUTCOME_COLOURS.items()]
    axis.set_ylim(0, max([FREEZE_TARGET_S, *heights]) * 1.25)
    axis.legend(handles=handles, fontsize=8, ncols=4, loc="upper left")
    return _save(figure, path)


# benchmark -> (drawing, caption); the file is bench/plots/<result stem>.png
PLOTS = {
    "mirror": (mirror, "Mirror throughput and lag distribution against the offered rate"),
    "backfill": (backfill_memory, "Backfill resident memory over time, per copy"),
    "cutover": (cutover, "Freeze window of every switch"),
}


def draw(name: str, stem: str, report: dict[str, Any] | None, directory: Path) -> tuple[Path, str] | None:
    """Draw the plot of one result file, if its benchmark has one and the report holds its data."""
    if report is None or name not in PLOTS:
        return None
    drawing, caption = PLOTS[name]
    path = directory / f"{stem}.png"
    return (path, caption) if drawing(report, path) else None
