"""The pictures in bench/RESULTS.md, drawn with matplotlib from the benchmarks' raw JSON.

A plot appears where a picture reads better than a table:

* mirror: records applied per second at saturation, dynashift and the naive
  handler against the engine's ceiling for the same writes; beside it, the
  lag distribution (p50 / p95 / p99 / max) at half the ceiling;
* backfill: each copy's resident memory over time (`rss_samples`), which is
  what "peak RSS does not grow with the data" looks like;
* cutover: the freeze window of every switch, coloured by outcome, against
  the target (mode cache age + 1 s).

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

FREEZE_SLACK_S = 1.0  # the cutover target: mode cache age + 1 s
OUTCOME_COLOURS = {"switched": "tab:green", "aborted": "tab:orange", "refused": "tab:gray"}


def _save(figure: Any, path: Path) -> bool:
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return True


def mirror(report: dict[str, Any], path: Path) -> bool:
    rows = (report.get("summary") or {}).get("rows") or []
    if not rows or "scenario" not in rows[0]:
        return False  # an older report (rates offered, no saturation scenarios)
    figure, (rate_axis, lag_axis) = plt.subplots(1, 2, figsize=(11, 4))
    bars = [(label, r) for label, key in (("engine ceiling\n(same writes)", ("ceiling", "ceiling")),
                                          ("dynashift", ("drain", "dynashift")), ("naive", ("drain", "naive")))
            for r in rows if (r["scenario"], r["handler"]) == key and r.get("records_per_s")]
    if bars:
        medians = [r["records_per_s"]["median"] for _, r in bars]
        errors = [[m - r["records_per_s"]["min"] for m, (_, r) in zip(medians, bars, strict=True)],
                  [r["records_per_s"]["max"] - m for m, (_, r) in zip(medians, bars, strict=True)]]
        rate_axis.bar(range(len(bars)), medians, yerr=errors, color=["tab:red", "tab:blue", "tab:gray"][:len(bars)])
        rate_axis.set_xticks(range(len(bars)), [label for label, _ in bars])
        ceiling = next((r for label, r in bars if label.startswith("engine")), None)
        if ceiling:
            rate_axis.axhline(0.8 * ceiling["records_per_s"]["median"], color="tab:red", linestyle="--",
                              label="target: 0.8 x ceiling")
            rate_axis.legend(fontsize=8)
    rate_axis.set(ylabel="records/s", title="Backlog applied flat out (medians, min-max)")
    lags = [r for r in rows if r["scenario"] == "lag" and r.get("p99_ms")]
    for offset, row in enumerate(lags):
        keys = [k for k in ("p50_ms", "p95_ms", "p99_ms", "max_ms") if row.get(k)]
        lag_axis.bar([i * (len(lags) + 1) + offset for i in range(len(keys))],
                     [row[k]["median"] / 1000 for k in keys], label=row["handler"])
        if offset == 0:
            lag_axis.set_xticks([i * (len(lags) + 1) + (len(lags) - 1) / 2 for i in range(len(keys))],
                                [k[:-3] for k in keys])
    lag_axis.axhline(1.0, color="tab:red", linestyle="--", label="target: p99 < 1 s")
    rate = (lags[0].get("offered_rate") or {}).get("median") if lags else None
    lag_axis.set(ylabel="lag, write to applied (s)",
                 title=f"Lag at half the ceiling{f' ({rate:.0f} writes/s)' if rate else ''}")
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
    target = float((report.get("config") or {}).get("cache_age_s", 2.0)) + FREEZE_SLACK_S
    labels = [f"{r['op']} {r['cycle'] + 1}" for r in runs]
    heights = [r.get("freeze_window_s") or 0.0 for r in runs]
    colours = [OUTCOME_COLOURS.get(r.get("outcome", ""), "tab:blue") for r in runs]
    axis.bar(range(len(runs)), heights, color=colours)
    axis.axhline(target, color="tab:red", linestyle="--", label=f"target: {target:g} s")
    axis.set_xticks(range(len(runs)), labels, rotation=45, ha="right", fontsize=8)
    rate = (report.get("config") or {}).get("rate")
    axis.set(ylabel="freeze window (s)",
             title=f"Cutover: freeze window per switch{f' at {rate:g} writes/s offered' if rate else ''}")
    handles, _ = axis.get_legend_handles_labels()
    handles += [Patch(color=colour, label=outcome) for outcome, colour in OUTCOME_COLOURS.items()]
    axis.set_ylim(0, max([target, *heights]) * 1.25)
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
