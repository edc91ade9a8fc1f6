"""batchflow.sql: parsing with raw-line errors, output columns, CTE inlining, and BigQuery -> DuckDB
transpiling checked by running the result on DuckDB against BigQuery's documented results."""

from __future__ import annotations

import duckdb
import jinja2
import pytest
import sqlglot

from batchflow.errors import CompileError
from batchflow.sql import add_ctes, map_compiled_line, output_columns, parse_bigquery, to_duckdb
from batchflow.warehouse.duckdb_functions import farm_fingerprint64, install

# --- parse_bigquery ---------------------------------------------------------------------------------

RAW_MODEL = """{{ config(materialized='table') }}
{# a comment
   over three
   lines #}
{% set cols = ['a', 'b', 'c'] %}
select
{% for c in cols %}
  {{ c }},
{% endfor %}
  count(*) as n
from {{ ref('orders') }}
where status = = 'x'
group by 1
"""


def compile_raw(raw: str) -> str:
    env = jinja2.Environment()
    return env.from_string(raw).render(config=lambda **_: "", ref=lambda name: f"proj.ds.{name}")


def test_parse_returns_one_statement_and_accepts_trailing_semicolon():
    expr = parse_bigquery("select a, b from t;\n")
    assert isinstance(expr, sqlglot.exp.Select)
    assert expr.sql(dialect="bigquery") == "SELECT a, b FROM t"


def test_parse_error_points_at_raw_template_line():
    compiled = compile_raw(RAW_MODEL)
    compiled_line = compiled.splitlines().index("where status = = 'x'") + 1
    raw_line = RAW_MODEL.splitlines().index("where status = = 'x'") + 1
    assert compiled_line != raw_line  # the Jinja lines really shift it
    with pytest.raises(CompileError) as info:
        parse_bigquery(compiled, path="models/orders_by.sql", raw_source=RAW_MODEL)
    err = info.value
    assert err.path == "models/orders_by.sql"
    assert err.line == raw_line
    assert "near '='" in err.message and "\n" not in err.message
    assert str(err).startswith(f"models/orders_by.sql:{raw_line}: SQL syntax error")


def test_parse_error_without_raw_source_uses_compiled_line():
    with pytest.raises(CompileError) as info:
        parse_bigquery("select a\nfrom t\nwhere x = = 1", path="m.sql")
    assert (info.value.path, info.value.line) == ("m.sql", 3)


def test_parse_error_on_a_line_rewritten_by_jinja():
    raw = "{% set t = 'orders' %}\n\nselect\n  a\nfrom {{ t }}_daily where x = = 2\ngroup by 1\n"
    compiled = compile_raw(raw)
    assert "from orders_daily where x = = 2" in compiled.splitlines()
    with pytest.raises(CompileError) as info:
        parse_bigquery(compiled, path="m.sql", raw_source=raw)
    # The error line exists only after rendering: it is found by its literal (non-Jinja) text.
    assert info.value.line == 5


def test_token_error_has_line():
    with pytest.raises(CompileError) as info:
        parse_bigquery("select 1,\n  2\nfrom 'unterminated", path="m.sql")
    assert info.value.line == 3


@pytest.mark.parametrize("sql", ["", "   \n", "-- only a comment\n", ";"])
def test_empty_sql_is_rejected(sql):
    with pytest.raises(CompileError, match="empty SQL"):
        parse_bigquery(sql, path="m.sql")


def test_multiple_statements_are_rejected_at_the_second_one():
    raw = "{# header #}\nselect 1 as a;\n\n{{ 'select' }} 2 as b\n"
    with pytest.raises(CompileError, match="found 2") as info:
        parse_bigquery(compile_raw(raw), path="m.sql", raw_source=raw)
    assert info.value.line == 4


# --- map_compiled_line ------------------------------------------------------------------------------


def test_map_exact_line_after_shift():
    raw = "{# c\nc #}\nselect\n  a\nfrom t\n"
    compiled = "\nselect\n  a\nfrom t\n"
    assert map_compiled_line(raw, compiled, 3) == 4  # '  a'
    assert map_compiled_line(raw, compiled, 4) == 5


def test_map_repeated_text_prefers_the_anchored_occurrence():
    raw = "select\n  x,\n{% if true %}\n  y,\n{% endif %}\n  x\nfrom t"
    compiled = compile_raw(raw)
    lines = compiled.splitlines()
    last_x = len(lines) - lines[::-1].index("  x")
    assert map_compiled_line(raw, compiled, last_x) == 6
    assert map_compiled_line(raw, compiled, 2) == 2


def test_map_jinja_expression_line_by_literal_text():
    raw = "select\n  {{ col }} as value,\n  {{ other }} + 1 as bumped\nfrom t"
    compiled = "select\n  price * 2 as value,\n  qty + 1 as bumped\nfrom t"
    assert map_compiled_line(raw, compiled, 2) == 2
    assert map_compiled_line(raw, compiled, 3) == 3


def test_map_loop_expansion_lands_inside_the_loop():
    raw = "select\n{% for c in cols %}\n  {{ c }},\n{% endfor %}\n  n\nfrom t"
    compiled = jinja2.Environment().from_string(raw).render(cols=["a", "b", "c", "d"])
    line_of_c = compiled.splitlines().index("  c,") + 1
    assert map_compiled_line(raw, compiled, line_of_c) == 3


def test_map_uses_token_when_nothing_else_matches():
    raw = "select\n{{ y('bad_col') }}\n{{ x }}\nfrom t"
    compiled = "select\na,\nb,\nc + bad_col\nfrom t"
    # Interpolation alone would say raw line 3; the parser's highlighted token is on raw line 2.
    assert map_compiled_line(raw, compiled, 4) == 3
    assert map_compiled_line(raw, compiled, 4, token="bad_col") == 2


def test_map_out_of_range_clamps():
    assert map_compiled_line("a\nb\nc", "a\nb\nc\nd\ne", 99) == 3
    assert map_compiled_line("a\nb", "a\nb", 0) == 1
    assert map_compiled_line("", "select 1", 1) == 1


# --- output_columns -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sql", "expected"),
    [
        ("select a, b as c, t.d, s.x.y from t", ["a", "c", "d", "y"]),
        ("select 1, a, upper(b), 'x' as k from t", ["f0_", "a", "f1_", "k"]),
        ("with q as (select * from t) select a, b from q", ["a", "b"]),
        ("select a, b from t union all select c, d from u", ["a", "b"]),
        ("(select a from t)", ["a"]),
        ("select * from t", None),
        ("select t.*, a from t", None),
        ("select * except (a) from t", None),
    ],
)
def test_output_columns(sql, expected):
    assert output_columns(parse_bigquery(sql)) == expected


# --- add_ctes -----------------------------------------------------------------------------------------


def test_add_ctes_without_existing_with(conn):
    sql = add_ctes("select n * 2 as m from eph", [("eph", "select 21 as n;")])
    assert sql.upper().startswith("WITH EPH AS (SELECT 21 AS N)")
    assert conn.execute(to_duckdb(sql)).fetchall() == [(42,)]


def test_add_ctes_merges_before_existing_ctes(conn):
    sql = add_ctes(
        "with local as (select n + 1 as n from eph2) select n from local union all select n from eph1",
        [("eph1", "select 1 as n"), ("eph2", "with inner_q as (select 10 as n) select n from inner_q")],
    )
    ctes = [c.alias for c in parse_bigquery(sql).args["with_"].expressions]
    assert ctes == ["eph1", "eph2", "local"]
    assert sorted(conn.execute(to_duckdb(sql)).fetchall()) == [(1,), (11,)]


def test_add_ctes_rejects_duplicate_names():
    with pytest.raises(CompileError, match="already used"):
        add_ctes("with eph as (select 1 as n) select n from eph", [("eph", "select 2 as n")])


def test_add_ctes_with_nothing_to_add_returns_the_sql():
    assert add_ctes("select 1", []) == "select 1"


# --- to_duckdb: every fix executed on DuckDB ----------------------------------------------------------


def run(conn, bigquery_sql: str) -> list[tuple]:
    sqlglot.parse_one(bigquery_sql, read="bigquery")  # the input is valid BigQuery
    return conn.execute(to_duckdb(bigquery_sql)).fetchall()


def one(conn, bigquery_sql: str) -> tuple:
    (row,) = run(conn, bigquery_sql)
    return row


def test_json_type_names_are_bigquery_lowercase(conn):
    assert one(
        conn,
        """select JSON_TYPE(JSON '[1]'), JSON_TYPE(JSON '{"a": 1}'), JSON_TYPE(JSON '"s"'),
                  JSON_TYPE(JSON '1'), JSON_TYPE(JSON '1.5'), JSON_TYPE(JSON 'true'), JSON_TYPE(JSON 'null'),
                  JSON_TYPE(PARSE_JSON('-7')), JSON_TYPE(CAST(NULL AS JSON))""",
    ) == ("array", "object", "string", "number", "number", "boolean", "null", "number", None)


def test_safe_parse_json_returns_null_on_bad_json(conn):
    assert one(
        conn,
        """select SAFE.PARSE_JSON('not json'), SAFE.PARSE_JSON(''), SAFE.PARSE_JSON(CAST(NULL AS STRING)),
                  TO_JSON_STRING(SAFE.PARSE_JSON('{"a": [1, 2]}'))""",
    ) == (None, None, None, '{"a":[1,2]}')


def test_parse_json_still_fails_on_bad_json(conn):
    with pytest.raises(duckdb.Error):
        run(conn, "select PARSE_JSON('not json')")


def test_other_safe_functions_return_null_instead_of_failing(conn):
    assert one(conn, "select SAFE.PARSE_DATE('%Y-%m-%d', 'nope'), SAFE.SUBSTR('abc', 2)") == (None, "bc")


def test_regexp_extract_semantics(conn):
    # Group 1 when the pattern has one, else the whole match; NULL when nothing matches.
    assert one(
        conn,
        r"""select REGEXP_EXTRACT('Bad Request: {"x": 1}', r'^([^:]+):'),
                  REGEXP_EXTRACT('a1b22', r'\d+'),
                  REGEXP_EXTRACT('abc', r'z(.)'),
                  REGEXP_EXTRACT('xxab', r'(?:a)b'),
                  REGEXP_EXTRACT('line1\nline2 {"k": 2}', r'(?s)(\{.*\})')""",
    ) == ("Bad Request", "1", None, "ab", '{"k": 2}')


def test_regexp_replace_replaces_every_match(conn):
    assert one(conn, r"select REGEXP_REPLACE('a.b.c', r'\.', '-'), REGEXP_REPLACE('abc', r'(b)', r'[\1]')") == (
        "a-b-c",
        "a[b]c",
    )


DOC = '{"s": "x\\ny", "n": 1.50, "i": 7, "b": true, "z": null, "arr": [1, "two", {"k": 3}], "o": {"k": "v"}}'


@pytest.mark.parametrize("wrap", ["PARSE_JSON(r'{doc}')", "r'{doc}'"], ids=["json", "string"])
def test_json_value_on_json_and_string(conn, wrap):
    doc = wrap.format(doc=DOC)
    assert one(
        conn,
        f"""select JSON_VALUE({doc}, '$.s'), JSON_VALUE({doc}, '$.n'), JSON_VALUE({doc}, '$.i'),
                   JSON_VALUE({doc}, '$.b'), JSON_VALUE({doc}, '$.z'), JSON_VALUE({doc}, '$.arr'),
                   JSON_VALUE({doc}, '$.o'), JSON_VALUE({doc}, '$.arr[1]'), JSON_VALUE({doc}, '$.o.k'),
                   JSON_VALUE({doc}, '$.missing'), JSON_EXTRACT_SCALAR({doc}, '$.i')""",
    ) == ("x\ny", "1.5", "7", "true", None, None, None, "two", "v", None, "7")


def test_json_value_on_malformed_string_is_null(conn):
    assert one(conn, "select JSON_VALUE('not json', '$.a'), JSON_QUERY('', '$.a')") == (None, None)


def test_json_query_null_differs_between_json_and_string(conn):
    # BigQuery: a JSON null extracts as SQL NULL from STRING input, as JSON 'null' from JSON input.
    assert one(
        conn,
        """select JSON_QUERY('{"a": null}', '$.a') IS NULL,
                  TO_JSON_STRING(JSON_QUERY(JSON '{"a": null}', '$.a')),
                  TO_JSON_STRING(JSON_QUERY('{"a": {"b": [1]}}', '$.a'))""",
    ) == (True, "null", '{"b":[1]}')


@pytest.mark.parametrize("wrap", ["PARSE_JSON(r'{doc}')", "r'{doc}'"], ids=["json", "string"])
def test_json_query_array(conn, wrap):
    doc = wrap.format(doc=DOC)
    arr, not_array, missing, n = one(
        conn,
        f"""select JSON_QUERY_ARRAY({doc}, '$.arr'), JSON_QUERY_ARRAY({doc}, '$.o'),
                   JSON_QUERY_ARRAY({doc}, '$.missing'), ARRAY_LENGTH(JSON_EXTRACT_ARRAY({doc}, '$.arr'))""",
    )
    assert arr == ["1", '"two"', '{"k":3}']
    assert (not_array, missing, n) == (None, None, 3)


def test_json_value_array(conn):
    assert one(
        conn,
        """select JSON_VALUE_ARRAY(JSON '{"a": ["x", 1, true]}', '$.a'),
                  JSON_VALUE_ARRAY('{"a": ["x", {"k": 1}]}', '$.a'),
                  JSON_VALUE_ARRAY('{"a": "x"}', '$.a')""",
    ) == (["x", "1", "true"], None, None)


def test_unnest_json_query_array_of_string_input(conn):
    rows = run(
        conn,
        """select JSON_VALUE(p, '$.text') as t, o
           from UNNEST(JSON_QUERY_ARRAY('{"parts": [{"text": "a"}, {"text": "b"}]}', '$.parts')) as p with offset o
           order by o""",
    )
    assert rows == [("a", 0), ("b", 1)]


def test_to_json_string(conn):
    assert one(
        conn,
        """select TO_JSON_STRING(STRUCT(1 AS a, 'x"y' AS b)), TO_JSON_STRING(CAST(NULL AS STRING)),
                  TO_JSON_STRING('q'), TO_JSON_STRING([1, 2]), TO_JSON_STRING(JSON '{"k": [1, 2]}'),
                  TO_JSON_STRING(true)""",
    ) == ('{"a":1,"b":"x\\"y"}', "null", '"q"', "[1,2]", '{"k":[1,2]}', "true")


def test_json_literals_and_constructors(conn):
    (text,) = one(
        conn,
        """select TO_JSON_STRING(JSON_OBJECT('lit', JSON '{"a": [1, null]}', 'arr', JSON_ARRAY(1, 'x', JSON 'true'),
                                             's', 'it\\'s "q"', 'n', CAST(NULL AS STRING)))""",
    )
    assert text == '{"lit":{"a":[1,null]},"arr":[1,"x",true],"s":"it\'s \\"q\\"","n":null}'


def test_to_json_keeps_json_type(conn):
    duck = to_duckdb("select TO_JSON(STRUCT(1 AS a)) as j")
    assert conn.execute(f"select typeof(j), j from ({duck})").fetchall() == [("JSON", '{"a":1}')]


def test_farm_fingerprint_matches_bigquery_docs(conn):
    # Values from BigQuery's FARM_FINGERPRINT documentation example.
    rows = run(
        conn,
        """select FARM_FINGERPRINT(CONCAT(CAST(x AS STRING), y, CAST(z AS STRING)))
           from UNNEST([STRUCT(1 AS x, 'foo' AS y, true AS z), STRUCT(2, 'apple', false), STRUCT(3, '', true)])""",
    )
    assert rows == [(-1541654101129638711,), (2794438866806483259,), (-4880158226897771312,)]
    assert one(conn, "select FARM_FINGERPRINT(CAST(NULL AS STRING))") == (None,)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", 0x9AE16A3B2F90404F),
        ("abcdefgh", 0xFEE9D22990C82909),
        ("0123456789=012345", 0x46A7416ED4861E3B),
        ("Discard medicine more than two years old.", 0xE8F89AB6DF9BDD25),
        ("For every action there is an equal and opposite government program.", 0x55182F8859ECA4CE),
        ("The fugacity of a constituent in a mixture of gases at a given temperature is proportional "
         "to its mole fraction.  Lewis-Randall Rule", 0x098EFF6958C5E91A),
    ],
)
def test_farm_fingerprint_every_length_class(text, expected):
    # Reference Fingerprint64 values (farmhashna::Hash64) covering the 0-16, 17-32, 33-64 and >64 paths.
    assert farm_fingerprint64(text.encode()) & (2**64 - 1) == expected


def test_safe_cast_follows_bigquery_string_rules(conn):
    assert one(
        conn,
        """select SAFE_CAST('12' AS INT64), SAFE_CAST('1.5' AS INT64), SAFE_CAST('1e3' AS INT64),
                  SAFE_CAST('x' AS INT64), SAFE_CAST(2.5 AS INT64), SAFE_CAST('0x1A' AS INT64),
                  SAFE_CAST('TRUE' AS BOOL), SAFE_CAST('yes' AS BOOL), SAFE_CAST('x' AS FLOAT64),
                  SAFE_CAST('2.5' AS FLOAT64)""",
    ) == (12, None, None, None, 3, 26, True, None, None, 2.5)


def test_array_subquery_over_unnest(conn):
    assert one(
        conn,
        """select ARRAY(SELECT x * 2 FROM UNNEST([3, 1, 2]) AS x ORDER BY x),
                  ARRAY(SELECT x FROM UNNEST([1, 2]) AS x WHERE x > 5),
                  ARRAY(SELECT AS STRUCT x AS v, o FROM UNNEST(['a', 'b']) AS x WITH OFFSET o ORDER BY o DESC)[OFFSET(0)].v""",
    ) == ([2, 4, 6], [], "b")


def test_dates_and_timestamps_in_utc(conn):
    conn.execute("SET TimeZone = 'America/Los_Angeles'")
    install(conn)  # resets the session to BigQuery's UTC
    assert one(
        conn,
        """select CAST(DATE(ts) AS STRING), CAST(TIMESTAMP_TRUNC(ts, DAY) AS STRING),
                  CAST(TIMESTAMP_TRUNC(ts, WEEK) AS STRING), CAST(TIMESTAMP_TRUNC(ts, MONTH) AS STRING),
                  FORMAT_TIMESTAMP('%F %T', ts), FORMAT_TIMESTAMP('%Y-%m-%dT%H:%M:%E3SZ', ts),
                  FORMAT_TIMESTAMP('%H:%M %Z', ts), FORMAT_TIMESTAMP('%F %H:%M', ts, 'Asia/Tokyo'),
                  DATE(ts, 'America/New_York'), EXTRACT(DAYOFWEEK FROM ts), EXTRACT(DAYOFWEEK FROM DATE '2024-03-10')
           from (select TIMESTAMP '2024-03-06 23:30:05.250+00' as ts)""",
    ) == (
        "2024-03-06",
        "2024-03-06 00:00:00+00",
        "2024-03-03 00:00:00+00",
        "2024-03-01 00:00:00+00",
        "2024-03-06 23:30:05",
        "2024-03-06T23:30:05.250Z",
        "23:30 UTC",
        "2024-03-07 08:30",
        __import__("datetime").date(2024, 3, 6),
        4,
        1,
    )


def test_aggregates(conn):
    assert one(
        conn,
        """select COUNTIF(x > 1), LOGICAL_OR(x > 2), LOGICAL_AND(x > 0), IFNULL(MAX(NULLIF(x, x)), -1),
                  STRING_AGG(s, ',' ORDER BY x DESC), STRING_AGG(s), ANY_VALUE(s) IS NOT NULL, COUNT(DISTINCT s)
           from UNNEST([STRUCT(1 AS x, 'a' AS s), STRUCT(2, 'b'), STRUCT(3, 'c')])""",
    ) == (2, True, True, -1, "c,b,a", "a,b,c", True, 3)


def test_struct_and_unnest_of_array_of_struct(conn):
    conn.execute(
        "create table t as select 1 as id, [{'category': 'A', 'score': 0.5}, {'category': 'B', 'score': 0.1}] as arr"
        " union all select 2, []"
    )
    assert run(
        conn,
        """select t.id, r.category, o from t, UNNEST(t.arr) as r with offset o order by t.id, o""",
    ) == [(1, "A", 0), (1, "B", 1)]
    rows = run(conn, "select t.id, r.category from t left join UNNEST(t.arr) as r on true order by t.id, r.category")
    assert rows == [(1, "A"), (1, "B"), (2, None)]
    assert one(conn, "select STRUCT(1 AS a, 'x' AS b).b, [STRUCT(2 AS a)][OFFSET(0)].a") == ("x", 2)


def test_comma_unnest_runs_as_a_select_list_unnest_with_the_same_rows(conn):
    conn.execute(
        "create table t as select 1 as id, 'x' as note, [{'category': 'A', 'blocked': true}, {'category': 'B', 'blocked': false}] as arr"
        " union all select 2, 'y', [] union all select 3, 'z', NULL union all select 4, 'w', [{'category': 'C', 'blocked': true}]"
    )
    queries = [
        "select id, r.category from t, UNNEST(arr) as r where r.blocked order by id",
        "select t.id, t.note, r.category from t cross join UNNEST(t.arr) as r order by id, r.category",
        "select s.id, count(*) as n from t as s, UNNEST(s.arr) as r group by s.id order by s.id",
        "select * from t, UNNEST(arr) as r order by id, r.category",
    ]
    for query in queries:
        translated = to_duckdb(query)
        assert "CROSS JOIN" not in translated and "UNNEST" in translated, translated
        # the lateral join sqlglot would emit without the rewrite gives the same rows
        lateral = sqlglot.transpile(query, read="bigquery", write="duckdb")[0]
        assert "CROSS JOIN" in lateral
        assert run(conn, query) == conn.execute(lateral).fetchall(), query
    assert run(conn, queries[0]) == [(1, "A"), (4, "C")]  # empty and NULL arrays give no rows, as in BigQuery
    assert run(conn, queries[3])[0] == (1, "x", [{"category": "A", "blocked": True}, {"category": "B", "blocked": False}],
                                        {"category": "A", "blocked": True})
    # a second table, or an offset, keeps the join
    assert "CROSS JOIN" in to_duckdb("select id, x from t, UNNEST(t.arr) as x, u")
    assert "CROSS JOIN" in to_duckdb("select id, x, o from t, UNNEST(t.arr) as x with offset o")


def test_unnest_with_offset_is_zero_based(conn):
    assert run(conn, "select x, o from UNNEST(['a', 'b']) as x with offset o order by o") == [("a", 0), ("b", 1)]


def test_qualify_uuid_and_current_timestamp(conn):
    rows = run(
        conn,
        """select k, v from UNNEST([STRUCT('a' AS k, 1 AS v), STRUCT('a', 2), STRUCT('b', 5)])
           where true qualify ROW_NUMBER() OVER (PARTITION BY k ORDER BY v DESC) = 1 order by k""",
    )
    assert rows == [("a", 2), ("b", 5)]
    uuids = run(conn, "select GENERATE_UUID() as u from UNNEST([1, 2, 3])")
    assert len({u for (u,) in uuids}) == 3 and all(len(u) == 36 for (u,) in uuids)
    assert one(conn, "select CURRENT_TIMESTAMP() IS NOT NULL, CURRENT_TIMESTAMP() > TIMESTAMP '2024-01-01'") == (
        True,
        True,
    )


def test_to_duckdb_accepts_a_tree_and_several_statements():
    tree = parse_bigquery("select JSON_VALUE(r, '$.a') from t")
    assert "bf_json_value" in to_duckdb(tree).lower()
    assert to_duckdb("create table x as select 1 as a; insert into x select 2").count(";") == 1
