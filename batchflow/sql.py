"""BigQuery SQL: parse and validate compiled models, find their columns, inline CTEs, transpile to DuckDB.

Pure functions over strings and sqlglot trees. Models are written in BigQuery Standard SQL; the local
target runs them on DuckDB through `to_duckdb`, which leans on sqlglot's transpiler and then fixes the
places where the DuckDB functions sqlglot picks behave differently from BigQuery's, mostly by
rewriting calls into the `bf_*` functions that `batchflow.warehouse.duckdb_functions.install` defines.
"""

from __future__ import annotations

import difflib
import re
from pathlib import Path

import sqlglot
from sqlglot import exp
from sqlglot.errors import ParseError, TokenError

from batchflow.errors import CompileError

_BQ = "bigquery"
_DUCK = "duckdb"


# --- parsing ----------------------------------------------------------------------------------------


#: The first line of SQL written in another dialect that a warehouse adapter runs as it is (a DuckDB-flavoured
#: model on the DuckDB target): `to_duckdb` passes it through, `add_ctes` and `parse_bigquery` read it in its
#: dialect. Everything else batchflow hands a warehouse is BigQuery SQL.
DIALECT_MARK = "/* batchflow:dialect={} */\n"
_MARK_RE = re.compile(r"^/\* batchflow:dialect=(\w+) \*/\n")


def mark_dialect(sql: str, dialect: str) -> str:
    """`sql` tagged as written in `dialect` (a no-op for BigQuery)."""
    return sql if dialect == _BQ else DIALECT_MARK.format(dialect) + sql


def sql_dialect(sql: str) -> tuple[str, str]:
    """(dialect, body) of SQL that may carry a DIALECT_MARK."""
    found = _MARK_RE.match(sql)
    return (found.group(1), sql[found.end():]) if found else (_BQ, sql)


def transpile_one(sql: str, read: str, write: str) -> str:
    """One statement from dialect `read` to `write` (sqlglot; comments kept)."""
    if read == write:
        return sql
    return parse_one(sql, read).sql(dialect=write)


def for_target(sql: str, dialect: str, target_type: str) -> str:
    """SQL written in `dialect` as a warehouse adapter of `target_type` takes it: marked and untouched when
    the target speaks that dialect (no round trip through BigQuery), else transpiled to BigQuery SQL (the
    DuckDB adapter transpiles that on)."""
    if dialect == _BQ:
        return sql
    if dialect == target_type:
        return mark_dialect(sql, dialect)
    return transpile_one(sql, dialect, _BQ)


def parse_bigquery(
    sql: str, *, path: str | Path | None = None, raw_source: str | None = None
) -> exp.Expression:
    """Parse exactly one BigQuery statement (a trailing semicolon is fine); SQL carrying a DIALECT_MARK
    is parsed in its dialect."""
    dialect, body = sql_dialect(sql)
    return parse_one(body, dialect, path=path, raw_source=raw_source)


def parse_one(
    sql: str, dialect: str = _BQ, *, path: str | Path | None = None, raw_source: str | None = None
) -> exp.Expression:
    """Parse exactly one statement of `dialect` (a trailing semicolon is fine).

    `raw_source` is the Jinja template `sql` was rendered from: error lines are mapped back to it, so
    the user is pointed at the line they wrote rather than a line of the compiled SQL.
    """

    def fail(message: str, compiled_line: int | None, token: str | None = None) -> CompileError:
        line = compiled_line
        if compiled_line is not None and raw_source is not None:
            line = map_compiled_line(raw_source, sql, compiled_line, token=token)
        return CompileError(message, path=path, line=line)

    try:
        statements = [
            s for s in sqlglot.parse(sql, read=dialect) if s is not None and not isinstance(s, exp.Semicolon)
        ]
    except ParseError as e:
        info = e.errors[0] if e.errors else {}
        highlight = (info.get("highlight") or "").strip()
        # sqlglot names node classes in some messages; keep only the class name.
        description = re.sub(
            r"<class '(?:[\w]+\.)*(\w+)'>", r"\1", info.get("description") or str(e).split("\n")[0]
        )
        message = f"SQL syntax error: {description}" + (f" near '{highlight}'" if highlight else "")
        raise fail(message, info.get("line"), highlight or None) from None
    except TokenError as e:
        raise fail(f"SQL syntax error: {e}", _token_error_line(sql, str(e))) from None
    if not statements:
        raise CompileError("empty SQL: the model renders to no statement", path=path, line=None)
    if len(statements) > 1:
        raise fail(
            f"expected one SQL statement, found {len(statements)} (a model is a single SELECT query)",
            _second_statement_line(sql, dialect),
        )
    return statements[0]


def _second_statement_line(sql: str, dialect: str = _BQ) -> int | None:
    """Line (in `sql`) where the second statement starts."""
    after_semicolon = False
    for token in sqlglot.Dialect.get_or_raise(dialect).tokenize(sql):
        if token.token_type == sqlglot.TokenType.SEMICOLON:
            after_semicolon = True
        elif after_semicolon:
            return token.line
    return None


def _token_error_line(sql: str, message: str) -> int | None:
    """Line of a tokenizer error. The error carries no position, only the text read up to the
    failure ("Error tokenizing '<text>'"), so find where that text ends in `sql`."""
    match = re.search(r"Error tokenizing '(.*)'", message, re.DOTALL)
    pos = sql.find(match.group(1)) if match and match.group(1) else -1
    if pos < 0:
        return None
    return sql.count("\n", 0, pos + len(match.group(1))) + 1


_JINJA_TAG = re.compile(r"\{\{.*?\}\}|\{%.*?%\}|\{#.*?#\}")


def map_compiled_line(raw: str, compiled: str, line: int, token: str | None = None) -> int:
    """Map line `line` (1-based) of `compiled` (Jinja-rendered from `raw`) to the likeliest raw line.

    Lines that are identical in both texts anchor the mapping (difflib matching blocks). A compiled
    line inside an anchored block maps directly. Otherwise the answer lies in the raw "gap" between
    the surrounding anchors (the lines Jinja rewrote); within it, in order: a line with the same
    stripped text, nearest to the interpolated position; a line whose literal (non-Jinja) text all
    appears in the compiled line; a line containing `token` (the parser's highlight; by default the
    compiled line's first word); else the interpolated position. Without any clue, `line` clamped
    to the raw file's length.
    """
    raw_lines = [s.strip() for s in raw.splitlines()]
    comp_lines = [s.strip() for s in compiled.splitlines()]
    n_raw = len(raw_lines)
    if n_raw == 0:
        return 1
    idx = line - 1
    if not 0 <= idx < len(comp_lines):
        return min(max(line, 1), n_raw)
    target = comp_lines[idx]

    matcher = difflib.SequenceMatcher(None, raw_lines, comp_lines, autojunk=False)
    prev_raw, prev_comp = -1, -1
    next_raw, next_comp = n_raw, len(comp_lines)
    for a, b, size in matcher.get_matching_blocks():
        if size == 0:
            continue
        if b <= idx < b + size:
            return a + (idx - b) + 1
        if b + size <= idx:
            prev_raw, prev_comp = a + size - 1, b + size - 1
        elif b > idx:
            next_raw, next_comp = a, b
            break
    # Position proportional to where the compiled line sits between its anchors.
    expected = prev_raw + (idx - prev_comp) * (next_raw - prev_raw) / (next_comp - prev_comp)
    gap = list(range(prev_raw + 1, next_raw))
    if len(gap) == 1:
        return gap[0] + 1

    def nearest(candidates: list[int]) -> int | None:
        return min(candidates, key=lambda i: (abs(i - expected), i)) + 1 if candidates else None

    first_word = target.split()[0] if target.split() else ""
    needle = (token or first_word).strip()
    # Whole-word match, so a short token such as `c` does not hit every line containing the letter.
    word = re.compile(rf"(?<!\w){re.escape(needle)}(?!\w)", re.IGNORECASE) if needle else None
    for pool in (gap, list(range(n_raw))):
        if not pool:
            continue
        found = (
            nearest([i for i in pool if target and raw_lines[i] == target])
            or nearest([i for i in pool if _literal_parts_match(raw_lines[i], target)])
            or nearest([i for i in pool if word and word.search(raw_lines[i])])
        )
        if found:
            return found
        if pool is gap:
            return min(max(round(expected), gap[0]), gap[-1]) + 1
    return min(max(line, 1), n_raw)


def _literal_parts_match(raw_line: str, compiled_line: str) -> bool:
    """True when a raw line holds Jinja and all its literal text appears, in order, in compiled_line."""
    if not _JINJA_TAG.search(raw_line):
        return False
    parts = [p.strip() for p in _JINJA_TAG.split(raw_line) if p.strip()]
    if not parts:
        return False
    pos = 0
    for part in parts:
        pos = compiled_line.find(part, pos)
        if pos < 0:
            return False
        pos += len(part)
    return True


# --- query shape ------------------------------------------------------------------------------------


def output_columns(expr: exp.Expression) -> list[str] | None:
    """Output column names of the top-level query, as BigQuery names them, or None if it selects `*`.

    Unnamed expressions get BigQuery's generated names `f0_`, `f1_`, ... (numbered among unnamed ones).
    A set operation (UNION ...) takes its names from its first SELECT.
    """
    query = expr
    while True:
        if isinstance(query, exp.SetOperation):
            query = query.left
        elif isinstance(query, exp.Subquery):
            query = query.this
        else:
            break
    if not isinstance(query, exp.Select):
        return None
    names: list[str] = []
    unnamed = 0
    for select in query.selects:
        if isinstance(select, exp.Star) or (
            isinstance(select, exp.Column) and isinstance(select.this, exp.Star)
        ):
            return None
        if isinstance(select, exp.Alias):
            names.append(select.alias)
        elif isinstance(select, (exp.Column, exp.Dot)) and select.name:
            names.append(select.name)
        else:
            names.append(f"f{unnamed}_")
            unnamed += 1
    return names


def add_ctes(sql: str, ctes: list[tuple[str, str]]) -> str:
    """Prepend CTEs `(name, BigQuery SELECT)` to a BigQuery query; returns BigQuery SQL.

    The new CTEs go before any existing ones, so the query's own CTEs may reference them (this is
    how ephemeral models are inlined). A name clash with an existing CTE is a CompileError.
    """
    if not ctes:
        return sql
    dialect, _ = sql_dialect(sql)  # marked SQL stays in its dialect; each CTE is read in its own
    query = parse_bigquery(sql)
    if not isinstance(query, exp.Query):
        raise CompileError("CTEs can only be added to a query (SELECT / WITH)")
    existing = query.args.get("with_")
    taken = {cte.alias_or_name.lower() for cte in existing.expressions} if existing else set()
    new: list[exp.CTE] = []
    for name, body in ctes:
        if name.lower() in taken:
            raise CompileError(f"CTE name '{name}' is already used in the query")
        taken.add(name.lower())
        new.append(
            exp.CTE(this=parse_bigquery(body), alias=exp.TableAlias(this=exp.to_identifier(name)))
        )
    if existing:
        existing.set("expressions", new + list(existing.expressions))
    else:
        query.set("with_", exp.With(expressions=new))
    return mark_dialect(query.sql(dialect=dialect), dialect)


# --- BigQuery -> DuckDB -----------------------------------------------------------------------------


def to_duckdb(sql: str | exp.Expression) -> str:
    """Transpile BigQuery SQL (one or more statements, or a parsed tree) to DuckDB SQL.

    Rewrites on top of sqlglot's transpiler (the `bf_*` functions come from duckdb_functions.install):
    - JSON_VALUE / JSON_EXTRACT_SCALAR -> bf_json_value; JSON_QUERY / JSON_EXTRACT -> bf_json_query;
      JSON_QUERY_ARRAY / JSON_EXTRACT_ARRAY -> bf_json_query_array; JSON_VALUE_ARRAY -> bf_json_value_array
      (JSON or STRING input; NULL instead of errors for malformed text and non-arrays)
    - JSON_TYPE -> bf_json_type (lowercase BigQuery names)
    - SAFE.PARSE_JSON -> bf_safe_parse_json; any other SAFE.f(...) -> TRY(f(...))
    - TO_JSON_STRING -> bf_to_json_string ('null' for NULL); TO_JSON stays JSON (sqlglot casts it to text)
    - FARM_FINGERPRINT -> bf_farm_fingerprint
    - SAFE_CAST(x AS INT64 | BOOL) -> bf_safe_cast_int64 / bf_safe_cast_bool (BigQuery's string rules)
    - UNNEST ... WITH OFFSET o: references to `o` become `o - 1` (sqlglot emits WITH ORDINALITY,
      which counts from 1; BigQuery's offsets count from 0)
    - FROM t, UNNEST(expr) AS x (one table, one plain UNNEST) -> FROM (SELECT *, UNNEST(expr) AS x
      FROM t) AS t: the same rows, and DuckDB runs the select-list UNNEST ~2.5x faster than its lateral join
    - EXTRACT(DAYOFWEEK ...) + 1 (BigQuery counts Sunday as 1, DuckDB as 0)
    - FORMAT_TIMESTAMP: %E<n>S / %E*S / %Ez / %Z format elements, and the time zone argument
    - DATE_TRUNC(d, MONTH) & co. -> CAST(DATE_TRUNC('MONTH', d) AS DATE) (BigQuery returns a DATE)
    """
    if isinstance(sql, str):
        dialect, body = sql_dialect(sql)
        if dialect == _DUCK:
            return body  # written for DuckDB: run as written
        if dialect != _BQ:
            sql = transpile_one(body, dialect, _BQ)
    statements = [sql] if isinstance(sql, exp.Expression) else sqlglot.parse(sql, read=_BQ)
    out = []
    for statement in statements:
        if statement is None:
            continue
        tree = _unnest_in_select_list(_zero_based_offsets(statement.copy()))
        # Reversed pre-order visits every node after its descendants, so rewritten calls nest.
        for node in reversed(list(tree.walk())):
            new = _rewrite(node)
            if new is not node:
                if node is tree:
                    tree = new
                else:
                    node.replace(new)
        out.append(tree.sql(dialect=_DUCK))
    return ";\n".join(out)


def _zero_based_offsets(tree: exp.Expression) -> exp.Expression:
    """Shift unqualified references to each UNNEST's offset column in its SELECT by -1."""
    for unnest in list(tree.find_all(exp.Unnest)):
        offset = unnest.args.get("offset")
        select = unnest.find_ancestor(exp.Select)
        if not isinstance(offset, exp.Identifier) or select is None:
            continue
        for column in list(select.find_all(exp.Column)):
            if column.table or column.name != offset.name or column.find_ancestor(exp.Select) is not select:
                continue
            shifted = exp.Paren(this=exp.Sub(this=column.copy(), expression=exp.Literal.number(1)))
            # A bare projection keeps its output name.
            column.replace(exp.alias_(shifted, offset.name) if column.parent is select else shifted)
    return tree


def _unnest_in_select_list(tree: exp.Expression) -> exp.Expression:
    """``FROM t [AS a], UNNEST(expr) AS x`` -> ``FROM (SELECT *, UNNEST(expr) AS x FROM t [AS a]) AS a``.

    Only the plain case: one table, one CROSS/comma join of an UNNEST of one expression with a column
    alias and no offset, and every column of the SELECT named bare or through the table's name or the
    element (so the subquery, aliased as the table, resolves them alike). Both forms drop rows whose
    array is empty or NULL."""
    for select in list(tree.find_all(exp.Select)):
        joins = select.args.get("joins") or []
        source = select.args.get("from_")
        if len(joins) != 1 or source is None or not isinstance(source.this, exp.Table):
            continue
        table, join = source.this, joins[0]
        unnest = join.this
        alias = unnest.args.get("alias") if isinstance(unnest, exp.Unnest) else None
        if (
            alias is None
            or join.kind != "CROSS"
            or join.side
            or join.args.get("on")
            or join.args.get("using")
            or unnest.args.get("offset")
            or len(unnest.expressions) != 1
            or alias.this
            or len(alias.columns) != 1
            or not isinstance(table.this, exp.Identifier)
        ):
            continue
        element, name = alias.columns[0].name, table.alias_or_name
        names = {"", name, element}
        if any(
            c.table not in names or c.args.get("db") or c.args.get("catalog")
            for c in select.find_all(exp.Column)
            if c.find_ancestor(exp.Select) is select
        ):
            continue
        inner = exp.select(exp.Star(), exp.alias_(exp.Unnest(expressions=[unnest.expressions[0].copy()]), element))
        inner = inner.from_(table.copy())
        source.set("this", exp.Subquery(this=inner, alias=exp.TableAlias(this=exp.to_identifier(name))))
        select.set("joins", None)
    return tree


def _call(name: str, *args: exp.Expression) -> exp.Anonymous:
    return exp.Anonymous(this=name, expressions=list(args))


def _path_literal(path: exp.Expression | None) -> exp.Expression:
    """A JSONPath argument as a DuckDB string literal ('$' when omitted)."""
    if path is None:
        return exp.Literal.string("$")
    if isinstance(path, exp.JSONPath):
        return exp.Literal.string(path.sql(dialect=_DUCK).strip("'"))
    return path


_JSON_FUNCS: dict[type[exp.Expression], str] = {
    exp.JSONExtractScalar: "bf_json_value",
    exp.JSONExtract: "bf_json_query",
    exp.JSONExtractArray: "bf_json_query_array",
    exp.JSONValueArray: "bf_json_value_array",
}

# BigQuery format elements DuckDB's strftime lacks (zone-free forms; the session zone is UTC).
_FORMAT_FIXES = (
    (re.compile(r"%E\*S"), "%S.%f"),
    (re.compile(r"%E[4-6]S"), "%S.%f"),
    (re.compile(r"%E[1-3]S"), "%S.%g"),
    (re.compile(r"%Ez"), "+00:00"),
    (re.compile(r"%Z"), "UTC"),
)


def _rewrite(node: exp.Expression) -> exp.Expression:
    """One node of BigQuery tree -> a node that means the same on DuckDB (see to_duckdb)."""
    kind = type(node)
    if kind in _JSON_FUNCS and node.this is not None:
        return _call(_JSON_FUNCS[kind], node.this, _path_literal(node.expression))
    if isinstance(node, exp.JSONType):
        return _call("bf_json_type", node.this)
    if isinstance(node, exp.SafeFunc):
        inner = node.this
        if isinstance(inner, exp.ParseJSON):
            return _call("bf_safe_parse_json", inner.this)
        # DuckDB's TRY() turns the call's errors into NULL, which is what SAFE. means.
        return _call("TRY", inner)
    if isinstance(node, exp.JSONFormat):
        # sqlglot casts BigQuery's TO_JSON (which returns JSON) to text.
        return _call("to_json" if node.args.get("to_json") else "bf_to_json_string", node.this)
    if isinstance(node, exp.FarmFingerprint):
        return _call("bf_farm_fingerprint", *node.expressions)
    if isinstance(node, exp.TryCast) and node.args.get("safe"):
        to = node.to
        if to.is_type(exp.DataType.Type.BIGINT):
            return _call("bf_safe_cast_int64", node.this)
        if to.is_type(exp.DataType.Type.BOOLEAN):
            return _call("bf_safe_cast_bool", node.this)
    if isinstance(node, exp.Extract) and node.this.name.upper() == "DAYOFWEEK":
        plain = exp.Extract(this=node.this.copy(), expression=node.expression)
        return exp.Paren(this=exp.Add(this=plain, expression=exp.Literal.number(1)))
    if isinstance(node, exp.TimeToStr):
        return _fix_format_timestamp(node)
    if isinstance(node, exp.DateTrunc) and _truncates_to_a_date(node):
        # BigQuery's DATE_TRUNC(date, MONTH) is a DATE; DuckDB's date_trunc of a date is a TIMESTAMP.
        return exp.Cast(this=node.copy(), to=exp.DataType.build("DATE"))
    return node


_DATE_PARTS = frozenset({"DAY", "WEEK", "ISOWEEK", "MONTH", "QUARTER", "YEAR", "ISOYEAR"})


def _truncates_to_a_date(node: exp.DateTrunc) -> bool:
    """BigQuery DATE_TRUNC to a date granularity that sqlglot's DuckDB output leaves a TIMESTAMP (it casts
    weeks starting on a day other than Monday itself). DATE_TRUNC of a TIMESTAMP to HOUR & co. is left."""
    unit = node.args.get("unit")
    if isinstance(unit, exp.WeekStart):
        return unit.name.upper() == "MONDAY"
    return unit is not None and unit.name.upper() in _DATE_PARTS


def _fix_format_timestamp(node: exp.TimeToStr) -> exp.Expression:
    fmt = node.args.get("format")
    zone = node.args.get("zone")
    if isinstance(fmt, exp.Literal) and fmt.is_string and zone is None:
        text = fmt.this
        for pattern, replacement in _FORMAT_FIXES:
            text = pattern.sub(replacement, text)
        node.set("format", exp.Literal.string(text))
    if zone is not None:
        # sqlglot drops the zone argument; render the instant as wall-clock time in that zone.
        ts = node.this.this if isinstance(node.this, exp.TsOrDsToTimestamp) else node.this
        local = exp.AtTimeZone(
            this=exp.Cast(this=ts, to=exp.DataType.build("TIMESTAMPTZ")), zone=zone
        )
        return _call("STRFTIME", local, node.args["format"])
    return node
