"""Cron expressions: five fields, evaluated in UTC, and the next time they fire.

    ┌ minute (0-59)
    │ ┌ hour (0-23)
    │ │ ┌ day of month (1-31)
    │ │ │ ┌ month (1-12 or jan-dec)
    │ │ │ │ ┌ day of week (0-7 or sun-sat; 0 and 7 are Sunday)
    0 3 * * *

Each field takes `*`, a value, a range `a-b`, a step `*/n`, `a-b/n` or `a/n`, and lists of
those separated by commas. The macros `@hourly`, `@daily` (`@midnight`), `@weekly`, `@monthly`
and `@yearly` (`@annually`) stand for their usual expressions. As in Vixie cron, when both the
day of month and the day of week are restricted (neither starts with `*`), a day matching
either fires. Times are UTC, so a schedule never skips or repeats at a daylight-saving change.
"""

from __future__ import annotations

import calendar
from datetime import UTC, datetime, timedelta

from appliance.errors import ConfigError

MACROS = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
_MONTHS = {name.lower(): i for i, name in enumerate(calendar.month_abbr) if name}
_DAYS = {"sun": 0, "mon": 1, "tue": 2, "wed": 3, "thu": 4, "fri": 5, "sat": 6}
# (name, lowest, highest, names)
_FIELDS: tuple[tuple[str, int, int, dict[str, int]], ...] = (
    ("minute", 0, 59, {}),
    ("hour", 0, 23, {}),
    ("day of month", 1, 31, {}),
    ("month", 1, 12, _MONTHS),
    ("day of week", 0, 7, _DAYS),
)
_HORIZON_DAYS = 366 * 8  # covers every leap-day schedule (a 29 Feb that is also a Monday)


def _value(text: str, low: int, high: int, names: dict[str, int], field: str) -> int:
    value = names.get(text.lower())
    if value is None:
        if not text.isdigit():
            raise ConfigError(f"cron {field}: {text!r} is not a number")
        value = int(text)
    if not low <= value <= high:
        raise ConfigError(f"cron {field}: {value} is outside {low}-{high}")
    return value


def _field(text: str, low: int, high: int, names: dict[str, int], field: str) -> frozenset[int]:
    values: set[int] = set()
    for item in text.split(","):
        span, slash, step_text = item.partition("/")
        step = 1
        if slash:
            if not step_text.isdigit() or int(step_text) == 0:
                raise ConfigError(f"cron {field}: step {step_text!r} must be a positive number")
            step = int(step_text)
        if span == "*":
            start, end = low, high
        elif "-" in span:
            a, _, b = span.partition("-")
            start, end = _value(a, low, high, names, field), _value(b, low, high, names, field)
            if start > end:
                raise ConfigError(f"cron {field}: range {span!r} runs backwards")
        elif span:
            start = _value(span, low, high, names, field)
            end = high if slash else start
        else:
            raise ConfigError(f"cron {field}: empty item in {text!r}")
        values.update(range(start, end + 1, step))
    return frozenset(values)


class Cron:
    """A parsed cron expression. Raises ConfigError with one clear line when it is invalid."""

    def __init__(self, expression: str) -> None:
        self.expression = expression.strip()
        text = MACROS.get(self.expression.lower(), self.expression)
        parts = text.split()
        if len(parts) != 5:
            raise ConfigError(
                f"cron expression {expression!r} must have 5 fields "
                "(minute hour day-of-month month day-of-week) or be a macro like @daily"
            )
        fields = [
            _field(p, lo, hi, names, name)
            for p, (name, lo, hi, names) in zip(parts, _FIELDS, strict=True)
        ]
        self.minutes = sorted(fields[0])
        self.hours = sorted(fields[1])
        self.days = fields[2]
        self.months = fields[3]
        self.weekdays = frozenset(d % 7 for d in fields[4])  # 7 is Sunday too
        self._days_restricted = not parts[2].startswith("*")
        self._weekdays_restricted = not parts[4].startswith("*")
        if not any(
            self._day_matches(datetime(2000 + y, m, 1, tzinfo=UTC) + timedelta(days=d))
            for y in range(8)
            for m in self.months
            for d in range(31)
        ):
            raise ConfigError(f"cron expression {expression!r} never fires")

    def __repr__(self) -> str:
        return f"Cron({self.expression!r})"

    def _day_matches(self, day: datetime) -> bool:
        if day.month not in self.months:
            return False
        dom = day.day in self.days
        dow = (day.isoweekday() % 7) in self.weekdays
        if self._days_restricted and self._weekdays_restricted:
            return dom or dow
        return dom and dow

    def next_after(self, t: float) -> float:
        """The first time this expression fires strictly after `t` (UNIX seconds, UTC)."""
        start = datetime.fromtimestamp(t, UTC).replace(second=0, microsecond=0) + timedelta(
            minutes=1
        )
        day = start.replace(hour=0, minute=0)
        for _ in range(_HORIZON_DAYS):
            if self._day_matches(day):
                for hour in self.hours:
                    for minute in self.minutes:
                        at = day.replace(hour=hour, minute=minute)
                        if at >= start:
                            return at.timestamp()
            day += timedelta(days=1)
        raise ConfigError(f"cron expression {self.expression!r} never fires")  # unreachable
