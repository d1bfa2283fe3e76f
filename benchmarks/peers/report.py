"""Machine description, the results table (Markdown, so it pastes into the docs), the plot."""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any

COLUMNS: list[tuple[str, str]] = [
    ("system", "system"),
    ("store", "store"),
    ("enqueue_single_per_s", "enqueue/s (1 call/job)"),
    ("enqueue_bulk_per_s", "enqueue/s (bulk)"),
    ("processed_per_s_1p", "processed/s (1 proc)"),
    ("processed_per_s_2p", "processed/s (2 procs)"),
    ("pickup_p50_ms", "pickup p50 ms"),
    ("pickup_p99_ms", "pickup p99 ms"),
    ("fairness_b_last", "fairness: B's last job at"),
]


def machine() -> dict[str, Any]:
    mem_kib = 0
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_kib = int(line.split()[1])
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cores": os.cpu_count(),
        "ram_gib": round(mem_kib / 1024 / 1024, 1),
        "cpu": cpu,
        "python": platform.python_version(),
        "os": f"{platform.system()} {platform.release()}",
    }


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.1f}" if value < 100 else f"{value:,.0f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def table(rows: list[dict[str, Any]]) -> str:
    header = "| " + " | ".join(title for _, title in COLUMNS) + " |"
    rule = "|" + "|".join("---" if key in ("system", "store") else "---:" for key, _ in COLUMNS)
    lines = [header, rule + "|"]
    for row in rows:
        if row.get("error"):
            lines.append(f"| {row['system']} | {row['store']} | failed: {row['error']} |")
            continue
        lines.append("| " + " | ".join(_cell(row.get(key)) for key, _ in COLUMNS) + " |")
    return "\n".join(lines)


def ratios(rows: list[dict[str, Any]]) -> list[str]:
    """Conveyor against the fastest peer on the same store, from the same run."""
    ok = [r for r in rows if not r.get("error")]
    lines = []
    for ours in (r for r in ok if r["system"].startswith("conveyor-")):
        peers = [
            r for r in ok if r["store"] == ours["store"] and not r["system"].startswith("conveyor")
        ]
        if not peers:
            continue
        best = max(peers, key=lambda r: r["processed_per_s_1p"])
        lines.append(
            f"{ours['system']}: {ours['processed_per_s_1p'] / best['processed_per_s_1p']:.1f}x "
            f"the processing rate of {best['system']} (1 process), "
            f"pickup p50 {ours['pickup_p50_ms']:.1f} ms vs {best['pickup_p50_ms']:.1f} ms"
        )
    return lines


def plot(rows: list[dict[str, Any]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [r for r in rows if not r.get("error")]
    names = [r["system"] for r in ok]
    fig, axes = plt.subplots(1, 3, figsize=(15, 0.45 * len(ok) + 2.2), sharey=True)
    panels = [
        (
            "processed jobs/s",
            [("processed_per_s_1p", "1 process"), ("processed_per_s_2p", "2 processes")],
        ),
        (
            "enqueued jobs/s (log)",
            [("enqueue_single_per_s", "1 call/job"), ("enqueue_bulk_per_s", "bulk")],
        ),
        ("idle pickup ms (log)", [("pickup_p50_ms", "p50"), ("pickup_p99_ms", "p99")]),
    ]
    height = 0.38
    for ax, (label, series) in zip(axes, panels, strict=True):
        for k, (key, legend) in enumerate(series):
            values = [r.get(key) or 0 for r in ok]
            ys = [i + (k - 0.5) * height for i in range(len(ok))]
            ax.barh(ys, values, height=height, label=legend)
        ax.set_xlabel(label)
        if "log" in label:
            ax.set_xscale("log")
        ax.grid(axis="x", alpha=0.3)
        ax.legend(loc="lower right", fontsize=8)
    axes[0].set_yticks(range(len(ok)), names)
    axes[0].invert_yaxis()
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
