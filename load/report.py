"""The report of a load run: a markdown summary and a PNG plot, both from RunStats."""

from __future__ import annotations

from pathlib import Path

from load.stats import OUTCOMES, STAGE_METRICS, RunStats, Window

QUANTILES = (50, 95, 99)
FAILURES = ("dropped", "unanswered", "error")


def markdown_table(header: list[str], rows: list[list]) -> str:
    """A markdown table: text columns left-aligned, the rest right-aligned (by the first row)."""
    first = rows[0] if rows else header
    align = ["---" if isinstance(value, str) else "---:" for value in first]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(align) + "|"]
    lines += ["| " + " | ".join("-" if value is None else str(value) for value in row) + " |" for row in rows]
    return "\n".join(lines)


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


def _pcts(window: Window, metric: str) -> str:
    histogram = window.latency.get(metric)
    if histogram is None:
        return "-"
    return " / ".join(_ms(histogram.percentile(q)) for q in QUANTILES)


def _latency_metrics(stats: RunStats) -> list[str]:
    """The latencies this run has (TTFAT first; a gRPC run has only its stage's)."""
    present = set(stats.total.latency)
    return [m for m in ("ttfat_ms", *STAGE_METRICS) if m in present]


def markdown(stats: RunStats, title: str, description: list[str]) -> str:
    total = stats.total
    metrics = _latency_metrics(stats)
    lines = [f"# {title}", "", *description, ""]
    lines += ["## Totals", "", "| calls | " + " | ".join(OUTCOMES) + " | turns | "
              + " | ".join(f"{m[:-3]} p50 / p95 / p99 (ms)" for m in metrics) + " |",
              "|---|" + "---|" * (len(OUTCOMES) + 1 + len(metrics))]
    lines.append(f"| {total.calls_started} | " + " | ".join(str(total.outcomes.get(o, 0)) for o in OUTCOMES)
                 + f" | {total.turns} | " + " | ".join(_pcts(total, m) for m in metrics) + " |")
    failed = sum(total.outcomes.get(kind, 0) for kind in FAILURES)
    lines += ["", f"Dropped or failed calls: {failed}; refused at admission: {total.outcomes.get('refused', 0)}.", ""]

    deployments = sorted({name for w in stats.windows.values() for name in w.replicas})
    lines += [f"## Per {stats.window_s:g} s window (latency p50 / p95 / p99 in ms; replicas running at the window's end)",
              "", "| t (s) | target callers | calls started | turns | " + " | ".join(m[:-3] for m in metrics)
              + " | refused | failed | " + " | ".join(deployments) + " |",
              "|---|---|---|---|" + "---|" * (len(metrics) + 2 + len(deployments))]
    for window in stats.ordered_windows():
        failed = sum(window.outcomes.get(kind, 0) for kind in FAILURES)
        lines.append(f"| {window.start_s:g} | {window.target_callers} | {window.calls_started} | {window.turns} | "
                     + " | ".join(_pcts(window, m) for m in metrics)
                     + f" | {window.outcomes.get('refused', 0)} | {failed} | "
                     + " | ".join(str(window.replicas.get(name, "-")) for name in deployments) + " |")
    if stats.scale_events:
        lines += ["", "## Scaling (Serve's target replica count, and when exactly that many replicas were "
                  "running, none starting or draining)", "",
                  "| deployment | at (s) | target | settled at (s) | took (s) |", "|---|---|---|---|---|"]
        for event in stats.scale_events:
            took = "-" if event.running_at_s is None else f"{event.running_at_s - event.at_s:.1f}"
            running = "-" if event.running_at_s is None else f"{event.running_at_s:.1f}"
            lines.append(f"| {event.deployment} | {event.at_s:.1f} | {event.before} -> {event.target} | {running} "
                         f"| {took} |")
    return "\n".join(lines) + "\n"


def plot(stats: RunStats, path: Path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    windows = stats.ordered_windows()
    x = [w.start_s + stats.window_s / 2 for w in windows]
    metrics = _latency_metrics(stats)
    fig, (top, middle, bottom) = plt.subplots(3, 1, figsize=(11, 10), sharex=True)
    fig.suptitle(title)

    headline = metrics[0] if metrics else "ttfat_ms"
    for q, style in zip(QUANTILES, ("-", "--", ":")):
        top.plot(x, [_value(w, headline, q) for w in windows], style, label=f"{headline[:-3]} p{q}")
    top.set_ylabel("ms")
    callers = top.twinx()
    end_s = windows[-1].start_s + stats.window_s if windows else 0.0
    callers.step([w.start_s for w in windows] + [end_s], [w.target_callers for w in windows] + [0], where="post",
                 color="grey", alpha=0.5, label="target callers")
    callers.set_ylabel("callers")
    handles = top.get_legend_handles_labels()[0] + callers.get_legend_handles_labels()[0]
    top.legend(handles=handles, loc="upper left", fontsize="small")

    for metric in metrics:
        middle.plot(x, [_value(w, metric, 95) for w in windows], label=f"{metric[:-3]} p95")
    failures = [sum(w.outcomes.get(k, 0) for k in FAILURES) for w in windows]
    refused = [w.outcomes.get("refused", 0) for w in windows]
    middle.set_ylabel("ms")
    errors = middle.twinx()
    width = stats.window_s * 0.4
    errors.bar([v - width / 2 for v in x], failures, width=width, color="red", alpha=0.4, label="failed calls")
    errors.bar([v + width / 2 for v in x], refused, width=width, color="orange", alpha=0.4, label="refused calls")
    errors.set_ylabel("calls")
    errors.set_ylim(0, max(1, *failures, *refused) * 1.1)
    handles = middle.get_legend_handles_labels()[0] + errors.get_legend_handles_labels()[0]
    middle.legend(handles=handles, loc="upper left", fontsize="small")

    # Replica counts at the times they changed (held until the next change, drawn to the run's end).
    samples = stats.replica_samples
    deployments = sorted({name for _, counts in samples for name in counts})
    for name in deployments:
        times = [t for t, _ in samples] + [max(end_s, samples[-1][0])]
        running = [counts.get(name, {}).get("running", 0) for _, counts in samples]
        line, = bottom.step(times, running + running[-1:], where="post", label=f"{name} running")
        wanted = [counts.get(name, {}).get("target", 0) for _, counts in samples]
        bottom.step(times, wanted + wanted[-1:], where="post", linestyle="--", color=line.get_color(), alpha=0.6,
                    label=f"{name} target")
    bottom.set_ylabel("replicas")
    bottom.set_xlabel("time (s)")
    if deployments:
        bottom.legend(loc="upper left", fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def _value(window: Window, metric: str, q: float) -> float:
    histogram = window.latency.get(metric)
    value = None if histogram is None else histogram.percentile(q)
    return float("nan") if value is None else value
