"""Results of a benchmark run: rows, the printed table, JSON, and the RESULTS.md section."""

from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass, field
from pathlib import Path

SIDES = ("reference", "berth")
MiB = 1024 * 1024


@dataclass
class Row:
    """One line of the report: Berth's figure, the reference's, and the ratio against a target.

    Ratios are "higher is better": Berth/reference for rates, reference/Berth for times. A row
    with `absolute_target` (memory) is judged on Berth's own figure instead of a ratio.
    """

    key: str
    label: str
    unit: str
    higher_is_better: bool
    target: float
    absolute_target: bool = False
    runs: dict[str, list[float]] = field(default_factory=lambda: {s: [] for s in SIDES})
    # CPU share other processes took during each kept run (see system.BackgroundLoad)
    other_cpu: dict[str, list[float]] = field(default_factory=lambda: {s: [] for s in SIDES})
    details: dict[str, object] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)

    def value(self, side: str) -> float | None:
        runs = self.runs[side]
        return statistics.median(runs) if runs else None

    @property
    def ratio(self) -> float | None:
        b, r = self.value("berth"), self.value("reference")
        if self.absolute_target or b is None or r is None or b <= 0 or r <= 0:
            return None
        return b / r if self.higher_is_better else r / b

    @property
    def ok(self) -> bool | None:
        if self.errors:
            return False
        if self.absolute_target:
            b = self.value("berth")
            return None if b is None else b <= self.target
        # judged at the precision shown, so a printed "1.00x" never reads as a miss
        return None if self.ratio is None else round(self.ratio, 2) >= self.target

    @property
    def target_text(self) -> str:
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
            berth=self.value("berth"),
            reference=self.value("reference"),
            ratio=self.ratio,
            ok=self.ok,
            target_text=self.target_text,
        )
        return data


def _fmt(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    return f"{value:.2f}" if unit == "s" else f"{value:.1f}"


def _memory_cell(info: object) -> str:
    if not isinstance(info, dict) or not info:
        return "-"
    return f"{info['idle_mib']:.1f} -> {info['peak_mib']:.1f} (+{info['delta_mib']:.1f})"


def table(rows: list[Row], berth_label: str) -> list[list[str]]:
    out = [["measurement", "unit", berth_label, "reference", "ratio", "target", ""]]
    for row in rows:
        if row.key == "memory":
            berth = _memory_cell(row.details.get("berth"))
            ref = _memory_cell(row.details.get("reference"))
            unit = "MiB idle -> peak (+delta)"
            out.append([row.label, unit, berth, ref, "", row.target_text, row.verdict])
            continue
        out.append(
            [
                row.label,
                row.unit,
                _fmt(row.value("berth"), row.unit),
                _fmt(row.value("reference"), row.unit),
                f"{row.ratio:.2f}x" if row.ratio is not None else "-",
                row.target_text,
                row.verdict,
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
    section = [
        "",
        f"## {report['date']}: {report['mode']} run, Berth slot ran {report['berth_target']}",
        "",
        f"- Machine: `nproc` {m['nproc']}, CPU {m['cpu']}, {m['memory']} RAM, kernel {m['kernel']}",
        f"- Python {m['python']}; Berth {m['berth']}; reference: {m['reference']}",
        f"- Tools: {m['curl']}; {m['wrk']}; {m['skopeo']}",
        f"- Settings: blob {int(s['blob_bytes']) // MiB} MiB; median of {s['repeats']} runs; "
        f"request rates over {s['wrk_seconds']:g} s after a {s['warmup_seconds']:g} s warm-up "
        f"at {s['connections']} connections; {s['layers']} layers of "
        f"{int(s['layer_payload_bytes']) // 1024} KiB random bytes",
        "",
        markdown_table(cells),
        "",
    ]
    warnings: list[str] = report["warnings"]  # type: ignore[assignment]
    if warnings:
        section += ["Warnings:", "", *[f"- {w}" for w in warnings], ""]
    results: list[dict[str, object]] = report["results"]  # type: ignore[assignment]
    errors = [f"- {r['key']}: {e}" for r in results for e in r["errors"]]  # type: ignore[attr-defined]
    if errors:
        section += ["Errors:", "", *errors, ""]
    with path.open("a") as f:
        f.write("\n".join(section))
