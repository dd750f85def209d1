"""Results of a benchmark run: rows, the printed table, JSON, and the RESULTS.md section."""

from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass, field
from pathlib import Path

# "berth" is Berth at its defaults (server.workers = "auto"); "berth-1w" is `--workers 1`,
# shown beside it for comparison. Verdicts judge the defaults.
SIDES = ("reference", "berth", "berth-1w")
BERTH_SIDES = ("berth", "berth-1w")
MiB = 1024 * 1024


@dataclass
class Row:
    """One line of the report: Berth's figures, the reference's, and the ratios against a target.

    Ratios are "higher is better": Berth/reference for rates, reference/Berth for times. A row
    with `absolute_target` (memory, error counts) is judged on Berth's own figure, which must
    not exceed the target, instead of a ratio. A row without a target is shown, not judged.
    """

    key: str
    label: str
    unit: str
    higher_is_better: bool
    target: float | None
    absolute_target: bool = False
    runs: dict[str, list[float]] = field(default_factory=lambda: {s: [] for s in SIDES})
    # CPU share other processes took during each kept run (see system.BackgroundLoad)
    other_cpu: dict[str, list[float]] = field(default_factory=lambda: {s: [] for s in SIDES})
    details: dict[str, object] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)

    def value(self, side: str) -> float | None:
        runs = self.runs[side]
        return statistics.median(runs) if runs else None

    def ratio_of(self, side: str) -> float | None:
        b, r = self.value(side), self.value("reference")
        if self.absolute_target or b is None or r is None or b <= 0 or r <= 0:
            return None
        return b / r if self.higher_is_better else r / b

    @property
    def ratio(self) -> float | None:
        """Berth at its defaults against the reference."""
        return self.ratio_of("berth")

    def ok_of(self, side: str) -> bool | None:
        if self.errors:
            return False
        if self.target is None:
            return None
        if self.absolute_target:
            b = self.value(side)
            return None if b is None else b <= self.target
        # judged at the precision shown, so a printed "1.00x" never reads as a miss
        ratio = self.ratio_of(side)
        return None if ratio is None else round(ratio, 2) >= self.target

    @property
    def ok(self) -> bool | None:
        return self.ok_of("berth")

    @property
    def target_text(self) -> str:
        if self.target is None:
            return ""
        if self.absolute_target:
            return f"<= {self.target:g} {self.unit}"
        return f">= {self.target:g}x"

    @property
    def verdict(self) -> str:
        if self.errors:
            return "ERROR"
        return {True: "ok", False: "MISSED", None: "-"}[self.ok]

    def to_json(self) -> dict[str, object]:
        data = asdict(self)
        data.update(
            {side: self.value(side) for side in SIDES},
            ratio=self.ratio,
            ratio_1w=self.ratio_of("berth-1w"),
            ok=self.ok,
            ok_1w=self.ok_of("berth-1w"),
            target_text=self.target_text,
        )
        return data


def _fmt(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    if unit in ("operations", "errors"):
        return f"{value:.0f}"
    return f"{value:.2f}" if unit in ("s", "x idle") else f"{value:.1f}"


def _ratio(value: float | None) -> str:
    return f"{value:.2f}x" if value is not None else "-"


def table(rows: list[Row], berth_label: str) -> list[list[str]]:
    """Berth at its defaults, Berth with one worker, the reference, both ratios; the verdict
    judges the defaults, the last column the one-worker Berth."""
    out = [
        [
            "measurement", "unit", berth_label, f"{berth_label} 1w", "reference",
            "ratio", "ratio 1w", "target", "", "1w",
        ]
    ]  # fmt: skip
    for row in rows:
        out.append(
            [
                row.label,
                row.unit,
                *(_fmt(row.value(side), row.unit) for side in ("berth", "berth-1w", "reference")),
                _ratio(row.ratio),
                _ratio(row.ratio_of("berth-1w")),
                row.target_text,
                row.verdict,
                ""
                if row.errors
                else {True: "ok", False: "MISSED", None: "-"}[row.ok_of("berth-1w")],
            ]
        )
    return out


def text_table(cells: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in cells) for i in range(len(cells[0]))]
    lines = []
    for n, r in enumerate(cells):
        pairs = enumerate(zip(r, widths, strict=True))
        parts = (c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in pairs)
        lines.append("  ".join(parts).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def markdown_table(cells: list[list[str]]) -> str:
    lines = ["| " + " | ".join(cells[0]) + " |", "|" + "---|" * len(cells[0])]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in r) + " |" for r in cells[1:]]
    return "\n".join(lines)


def record(path: Path, report: dict[str, object], cells: list[list[str]]) -> None:
    """Append one dated section for this run to RESULTS.md."""
    m: dict[str, object] = report["machine"]  # type: ignore[assignment]
    s: dict[str, int | float] = report["settings"]  # type: ignore[assignment]
    load: dict[str, float] = report["load_average_1min"]  # type: ignore[assignment]
    section = [
        "",
        f"## {report['date']}: {report['mode']} run, Berth slots ran {report['berth_target']}",
        "",
        f"- Machine: `nproc` {m['nproc']}, CPU {m['cpu']}, {m['memory']} RAM, kernel {m['kernel']}",
        f"- 1-minute load average: {load['start']:.2f} at the start, {load['end']:.2f} at the end",
        f"- Python {m['python']}; Berth {m['berth']}; reference: {m['reference']}",
        f"- Tools: {m['curl']}; {m['wrk']}; {m['skopeo']}; {m['docker']}",
        f'- Berth: defaults (`server.workers = "auto"`: {report["berth_workers"]} serving '
        "processes and a supervisor) and `--workers 1` (the `1w` columns)",
        f"- Settings: blob {int(s['blob_bytes']) // MiB} MiB; median of {s['repeats']} runs; "
        f"request rates over {s['wrk_seconds']:g} s after a {s['warmup_seconds']:g} s warm-up "
        f"at {s['connections']} connections; {s['layers']} layers of "
        f"{int(s['layer_payload_bytes']) // 1024} KiB random bytes; mixed load "
        f"{s['mixed_seconds']:g} s, once per registry",
        "",
        markdown_table(cells),
        "",
    ]
    notes: list[str] = report["notes"]  # type: ignore[assignment]
    if notes:
        section += [*[f"- {n}" for n in notes], ""]
    warnings: list[str] = report["warnings"]  # type: ignore[assignment]
    if warnings:
        section += ["Warnings:", "", *[f"- {w}" for w in warnings], ""]
    results: list[dict[str, object]] = report["results"]  # type: ignore[assignment]
    errors = [f"- {r['key']}: {e}" for r in results for e in r["errors"]]  # type: ignore[attr-defined]
    if errors:
        section += ["Errors:", "", *errors, ""]
    with path.open("a") as f:
        f.write("\n".join(section))
