"""What Grafana does to a PostgreSQL panel query before PostgreSQL sees it, as pure functions.

The dashboards' test (tests/integration/test_grafana_dashboards.py) runs every panel's SQL through
`render()` and then against the real database, so a dashboard that would fail in Grafana fails here.
Each step follows the Grafana source it imitates:

1. Frontend, `templateSrv.replace(rawSql, scopedVars, SqlDatasource.interpolateVariable)`
   (packages/grafana-sql/src/datasource/SqlDatasource.ts): `$var`, `${var}`, `${var:format}` and
   `[[var]]`; a multi-value or include-All variable is single-quoted (quotes doubled) and
   comma-joined; a single-value variable is inserted with its single quotes doubled but unquoted;
   "All" becomes the variable's custom all value verbatim, or else the quoted list of every option.
   The built-ins `$__interval` / `$__interval_ms` come from `calculateInterval()` (rangeutil.ts):
   range / max data points, rounded by `roundInterval()`, at least the panel's min interval.
2. Backend, `sqleng.Interpolate`: `$__interval_ms`, `$__interval`, `$__unixEpochFrom()`,
   `$__unixEpochTo()`.
3. Backend, the PostgreSQL macro engine (pkg/tsdb/grafana-postgresql-datasource/macros.go):
   `$__time`, `$__timeEpoch`, `$__timeFilter`, `$__timeFrom`, `$__timeTo`, `$__timeGroup`,
   `$__timeGroupAlias`, `$__unixEpochFilter`, `$__unixEpochNanoFilter`, `$__unixEpochNanoFrom`,
   `$__unixEpochNanoTo`, `$__unixEpochGroup`, `$__unixEpochGroupAlias`; with `timescaledb: true`
   in the data source, `$__timeGroup` is `time_bucket('<seconds>.000s',col)`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal

ALL_VALUE = "$__all"  # what Grafana stores as the current value when "All" is selected


class MacroError(ValueError):
    """A macro Grafana would refuse ("interpolation failed")."""


# --------------------------------------------------------------------------------------------------
# Time ranges and intervals
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TimeRange:
    start: datetime  # Grafana's `from`
    end: datetime  # Grafana's `to`

    def __post_init__(self) -> None:
        if self.start.tzinfo is None or self.end.tzinfo is None:
            raise ValueError("TimeRange needs timezone-aware datetimes")


_UNIT_SECONDS = {
    "ms": 0.001,
    "s": 1,
    "m": 60,
    "h": 3600,
    "d": 86400,
    "w": 604800,
    "M": 2592000,
    "y": 31536000,
}
_RELATIVE_RE = re.compile(r"^now(?:-(\d+)(ms|[smhdwMy]))?$")


def parse_relative(expr: str, now: datetime) -> datetime:
    """Grafana's `now` and `now-<n><unit>` (the forms our dashboards use); M = 30 d, y = 365 d."""
    m = _RELATIVE_RE.match(expr.strip())
    if m is None:
        raise ValueError(f"unsupported time expression {expr!r} (use now or now-<n><unit>)")
    if m.group(1) is None:
        return now
    return now - timedelta(seconds=int(m.group(1)) * _UNIT_SECONDS[m.group(2)])


def dashboard_range(dashboard: Mapping[str, object], now: datetime) -> TimeRange:
    t = dashboard["time"]
    assert isinstance(t, Mapping)
    return TimeRange(parse_relative(str(t["from"]), now), parse_relative(str(t["to"]), now))


def interval_to_ms(text: str) -> float:
    """rangeutil.intervalToMs: '1h' -> 3600000; a bare number is seconds."""
    text = text.strip()
    try:
        return float(text) * 1000.0
    except ValueError:
        pass
    m = re.match(r"(-?\d+(?:\.\d+)?)(ms|[Mwdhmsy])", text)
    if m is None:
        raise ValueError(f"invalid interval {text!r}")
    return int(float(m.group(1))) * _UNIT_SECONDS[m.group(2)] * 1000.0


_ROUND_STEPS_MS = (
    (10, 1),
    (15, 10),
    (35, 20),
    (75, 50),
    (150, 100),
    (350, 200),
    (750, 500),
    (1500, 1000),
    (3500, 2000),
    (7500, 5000),
    (12500, 10000),
    (17500, 15000),
    (25000, 20000),
    (45000, 30000),
    (90000, 60000),
    (210000, 120000),
    (450000, 300000),
    (750000, 600000),
    (1050000, 900000),
    (1500000, 1200000),
    (2700000, 1800000),
    (5400000, 3600000),
    (9000000, 7200000),
    (16200000, 10800000),
    (32400000, 21600000),
    (86400000, 43200000),
    (604800000, 86400000),
    (1814400000, 604800000),
    (3628800000, 2592000000),
)


def round_interval(interval_ms: float) -> int:
    """rangeutil.roundInterval: a 'nice' interval in ms."""
    for below, value in _ROUND_STEPS_MS:
        if interval_ms < below:
            return value
    return 31536000000


def seconds_to_hms(seconds: float) -> str:
    """rangeutil.secondsToHms: the text of $__interval ('1h', '30s', '7d', '500ms')."""
    years = math.floor(seconds / 31536000)
    if years:
        return f"{years}y"
    days = math.floor((seconds % 31536000) / 86400)
    if days:
        return f"{days}d"
    hours = math.floor((seconds % 31536000 % 86400) / 3600)
    if hours:
        return f"{hours}h"
    minutes = math.floor((seconds % 31536000 % 86400 % 3600) / 60)
    if minutes:
        return f"{minutes}m"
    secs = math.floor(seconds % 31536000 % 86400 % 3600 % 60)
    if secs:
        return f"{secs}s"
    millis = math.floor(seconds * 1000.0)
    if millis:
        return f"{millis}ms"
    return "less than a millisecond"


def calculate_interval(
    rng: TimeRange, max_data_points: int, min_interval: str | None = None
) -> tuple[int, str]:
    """rangeutil.calculateInterval: ($__interval_ms, $__interval) for a panel."""
    low = interval_to_ms(min_interval) if min_interval else 1
    span_ms = (rng.end - rng.start).total_seconds() * 1000.0
    ms = round_interval(span_ms / max_data_points)
    if low > ms:
        ms = int(low)
    return ms, seconds_to_hms(ms / 1000.0)


_GO_INTERVAL_RE = re.compile(r"^(\d+)(ms|s|m|h|d|w|M|y)$")


def parse_go_interval(text: str) -> timedelta:
    """gtime.ParseInterval for '<n><unit>' (M and y as 30 and 365 days)."""
    m = _GO_INTERVAL_RE.match(text.strip())
    if m is None:
        raise MacroError(f"error parsing interval {text}")
    return timedelta(seconds=int(m.group(1)) * _UNIT_SECONDS[m.group(2)])


def go_float(x: float) -> str:
    """Go's fmt %v of a float64 (strconv 'g' with the shortest digits; %e when the decimal
    exponent is < -4 or >= 6): 300 -> '300', 0.5 -> '0.5', 2592000 -> '2.592e+06'."""
    if x == 0:
        return "0"
    _sign, digit_tuple, exponent = Decimal(repr(abs(x))).normalize().as_tuple()
    assert isinstance(exponent, int)
    digits = "".join(map(str, digit_tuple))
    exp = len(digits) + exponent - 1  # decimal exponent of the first digit
    neg = "-" if x < 0 else ""
    if exp < -4 or exp >= 6:
        mant = digits[0] + ("." + digits[1:] if len(digits) > 1 else "")
        return f"{neg}{mant}e{'+' if exp >= 0 else '-'}{abs(exp):02d}"
    if exp >= len(digits) - 1:
        return neg + digits + "0" * (exp - len(digits) + 1)
    if exp >= 0:
        return neg + digits[: exp + 1] + "." + digits[exp + 1 :]
    return neg + "0." + "0" * (-exp - 1) + digits


def rfc3339nano(t: datetime) -> str:
    """Go's time.RFC3339Nano in UTC: '2018-04-12T18:00:00Z', '...:00.5Z'."""
    t = t.astimezone(UTC)
    base = t.strftime("%Y-%m-%dT%H:%M:%S")
    if t.microsecond:
        base += "." + f"{t.microsecond:06d}".rstrip("0")
    return base + "Z"


# --------------------------------------------------------------------------------------------------
# Template variables (frontend)
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Variable:
    """A dashboard variable as the frontend sees it when a query is interpolated."""

    name: str
    value: str | tuple[str, ...]  # current value(s); ALL_VALUE (alone) means "All"
    multi: bool = False
    include_all: bool = False
    all_value: str | None = None  # the custom all value, inserted verbatim
    options: tuple[str, ...] = field(default=())  # every option's value (for All without all_value)

    @property
    def is_all(self) -> bool:
        v = self.value
        return v == ALL_VALUE or (isinstance(v, tuple) and ALL_VALUE in v)


def quote_literal(value: str) -> str:
    """PostgresQueryModel.quoteLiteral."""
    return "'" + str(value).replace("'", "''") + "'"


def _datasource_format(value: str | Sequence[str], var: Variable) -> str:
    """SqlDatasource.interpolateVariable (the PostgreSQL data source's default formatting)."""
    if isinstance(value, str):
        if var.multi or var.include_all:
            return quote_literal(value)
        return value.replace("'", "''")
    return ",".join(quote_literal(v) for v in value)


def _explicit_format(value: str | Sequence[str], fmt: str) -> str:
    values = [value] if isinstance(value, str) else list(value)
    if fmt in ("csv", "raw"):
        return ",".join(values)
    if fmt == "sqlstring":
        return ",".join(quote_literal(v) for v in values)
    if fmt == "singlequote":
        return ",".join("'" + v.replace("'", "\\'") + "'" for v in values)
    if fmt == "doublequote":
        return ",".join('"' + v.replace('"', '\\"') + '"' for v in values)
    if fmt == "text":
        return " + ".join(values)
    raise ValueError(f"variable format {fmt!r} is not emulated here")


# templateSrv's variable regex: $var | [[var(:fmt)]] | ${var(.path)(:fmt)}
_VARIABLE_RE = re.compile(r"\$(\w+)|\[\[(\w+?)(?::(\w+))?\]\]|\$\{(\w+)(?:\.([^:^\}]+))?(?::([^\}]+))?\}")


def interpolate_variables(sql: str, variables: Mapping[str, Variable], builtins: Mapping[str, str]) -> str:
    """templateSrv.replace with the PostgreSQL data source's formatter; unknown names stay as they are
    (that is how `$__timeFilter(...)` reaches the backend untouched)."""

    def repl(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(2) or m.group(4)
        fmt = m.group(3) or m.group(6)
        if name in builtins:
            return builtins[name]
        var = variables.get(name)
        if var is None:
            return m.group(0)
        value: str | Sequence[str] = var.value
        if var.is_all:
            if var.all_value is not None and fmt not in ("text", "percentencode"):
                return interpolate_variables(var.all_value, variables, builtins)
            value = list(var.options)
        if fmt:
            return _explicit_format(value, fmt)
        return _datasource_format(value, var)

    return _VARIABLE_RE.sub(repl, sql)


# --------------------------------------------------------------------------------------------------
# Backend: global substitutions and the PostgreSQL macro engine
# --------------------------------------------------------------------------------------------------


def interpolate_global(sql: str, rng: TimeRange, interval_ms: int, interval_text: str) -> str:
    """sqleng.Interpolate."""
    sql = sql.replace("$__interval_ms", str(interval_ms))
    sql = sql.replace("$__interval", interval_text)
    sql = sql.replace("$__unixEpochFrom()", str(int(rng.start.timestamp())))
    return sql.replace("$__unixEpochTo()", str(int(rng.end.timestamp())))


_MACRO_RE = re.compile(r"\$([_a-zA-Z0-9]+)\(([^\)]*)\)")


def _nanos(t: datetime) -> int:
    return int(t.timestamp()) * 1_000_000_000 + t.microsecond * 1000


def _fill_ok(arg: str) -> None:
    if arg in ("NULL", "previous"):
        return
    try:
        float(arg)
    except ValueError:
        raise MacroError(f"error parsing fill value {arg}") from None


def _evaluate(name: str, args: list[str], rng: TimeRange, timescaledb: bool) -> str:
    frm, to = rng.start, rng.end
    column_macros = ("__time", "__timeEpoch", "__timeFilter", "__unixEpochFilter", "__unixEpochNanoFilter")
    if name in column_macros and not args:  # as in Go: never, since splitting "" gives [""]
        raise MacroError(f"missing time column argument for macro {name}")
    if name == "__time":
        return f'{args[0]} AS "time"'
    if name == "__timeEpoch":
        return f'extract(epoch from {args[0]}) as "time"'
    if name == "__timeFilter":
        return f"{args[0]} BETWEEN '{rfc3339nano(frm)}' AND '{rfc3339nano(to)}'"
    if name == "__timeFrom":
        return f"'{rfc3339nano(frm)}'"
    if name == "__timeTo":
        return f"'{rfc3339nano(to)}'"
    if name in ("__timeGroup", "__unixEpochGroup"):
        if len(args) < 2:
            raise MacroError(f"macro {name} needs time column and interval and optional fill value")
        seconds = parse_go_interval(args[1].strip("'")).total_seconds()
        if len(args) == 3:
            _fill_ok(args[2])
        if name == "__unixEpochGroup":
            return f"floor(({args[0]})/{go_float(seconds)})*{go_float(seconds)}"
        if timescaledb:
            return f"time_bucket('{seconds:.3f}s',{args[0]})"
        return f"floor(extract(epoch from {args[0]})/{go_float(seconds)})*{go_float(seconds)}"
    if name in ("__timeGroupAlias", "__unixEpochGroupAlias"):
        return _evaluate(name.removesuffix("Alias"), args, rng, timescaledb) + ' AS "time"'
    if name == "__unixEpochFilter":
        return f"{args[0]} >= {int(frm.timestamp())} AND {args[0]} <= {int(to.timestamp())}"
    if name == "__unixEpochNanoFilter":
        return f"{args[0]} >= {_nanos(frm)} AND {args[0]} <= {_nanos(to)}"
    if name == "__unixEpochNanoFrom":
        return str(_nanos(frm))
    if name == "__unixEpochNanoTo":
        return str(_nanos(to))
    raise MacroError(f'unknown macro "{name}"')


def expand_macros(sql: str, rng: TimeRange, *, timescaledb: bool) -> str:
    """postgresMacroEngine.Interpolate, including its pre-5.3 rule: `$__timeGroup(...)` directly
    followed by ',' (at its first occurrence) gets ' AS "time"'."""
    out: list[str] = []
    last = 0
    for m in _MACRO_RE.finditer(sql):
        name = m.group(1)
        if name == "__timeGroup":
            idx = sql.find(m.group(0))
            if idx >= 0 and sql[idx + len(m.group(0)) : idx + len(m.group(0)) + 1] == ",":
                name = "__timeGroupAlias"
        args = [a.strip(" ") for a in m.group(2).split(",")]
        out.append(sql[last : m.start()])
        out.append(_evaluate(name, args, rng, timescaledb))
        last = m.end()
    out.append(sql[last:])
    return "".join(out)


# --------------------------------------------------------------------------------------------------
# The whole path of one panel query
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PanelContext:
    """What Grafana knows when it runs a panel's query."""

    time_range: TimeRange
    max_data_points: int = 1000
    min_interval: str | None = None  # panel "interval" (or the data source's timeInterval)


def builtin_variables(ctx: PanelContext) -> tuple[dict[str, str], int, str]:
    ms, text = calculate_interval(ctx.time_range, ctx.max_data_points, ctx.min_interval)
    start_ms = int(ctx.time_range.start.timestamp() * 1000)
    end_ms = int(ctx.time_range.end.timestamp() * 1000)
    span = end_ms - start_ms
    builtins = {
        "__interval": text,
        "__interval_ms": str(ms),
        "__from": str(start_ms),
        "__to": str(end_ms),
        "__range_ms": str(span),
        "__range_s": str(span // 1000),
        "__range": f"{span // 1000}s",
    }
    return builtins, ms, text


def render(sql: str, variables: Mapping[str, Variable], ctx: PanelContext, *, timescaledb: bool) -> str:
    """The SQL PostgreSQL receives for a panel target's rawSql."""
    builtins, ms, text = builtin_variables(ctx)
    sql = interpolate_variables(sql, variables, builtins)
    sql = interpolate_global(sql, ctx.time_range, ms, text)
    return expand_macros(sql, ctx.time_range, timescaledb=timescaledb)
