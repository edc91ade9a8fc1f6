#!/usr/bin/env python3
"""Local pipeline throughput: N synthetic reviews through request building, the local batch executor
(mock provider) and the flatten models, side by side with plain DuckDB SQL and a naive pandas script.

Three child processes run on the same generated CSV (each measured alone: wall seconds per stage and
the child's peak RSS from os.wait4):

  batchflow   a generated project in a temp dir, `batchflow build` (in a child that wraps the batch
              lifecycle's stages with timers; nothing else is changed):
                load     source sample CSV -> table (+ the staging table)
                build    the batch model's SELECT (gemini_request) materialised with a request hash
                validate every request checked (JSON, contents, roles)
                diff     requests still needing an answer
                execute  shards submitted to the local executor (mock provider), answers landed
                results  the model's relation (requests joined to answers) and its outcome summary
                flatten  the flatten models: response_text / json_field / row_outcome / usage_tokens /
                         finish_reason table, and the safety_ratings UNNEST table (independent models,
                         built side by side: the stage is their wall span; the sum is printed too)
  duckdb      the same transforms hand-written as plain DuckDB SQL: the floor. Its "execute" fabricates a
              Gemini-shaped answer per row in SQL (no Python): a lower bound for writing the output.
  pandas      a naive hand-written batch script: read the CSV, loop per row building the request dict,
              call the same MockProvider one row at a time, loop again to flatten the answers.

    .venv/bin/python benchmarks/bench_pipeline.py                 # 1,000,000 rows
    .venv/bin/python benchmarks/bench_pipeline.py --rows 20000    # a quick check
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from datetime import datetime
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
MODEL = "gemini-2.5-flash"
SYSTEM = "You label product reviews. Answer with JSON only."
GEN_CONFIG = {
    "temperature": 0.0,
    "maxOutputTokens": 256,
    "responseMimeType": "application/json",
    "responseSchema": {
        "type": "OBJECT",
        "properties": {
            "sentiment": {"type": "STRING", "enum": ["positive", "negative", "mixed"]},
            "summary": {"type": "STRING"},
        },
        "required": ["sentiment", "summary"],
    },
}

# ----------------------------------------------------------------------------------------------------
# data and project


def make_csv(path: Path, rows: int) -> None:
    import duckdb

    words = ["great", "poor", "fast", "shipping", "quality", "price", "broke", "love", "size", "support",
             "arrived", "late", "works", "perfect", "cheap", "sturdy", "returned", "again", "never", "recommend"]
    con = duckdb.connect()
    con.execute(f"""
        COPY (
            SELECT printf('R%08d', i) AS review_id,
                   printf('P%03d', i % 500) AS product_id,
                   1 + i % 5 AS rating,
                   list_aggregate(list_transform(range(8 + i % 17),
                       lambda k: ({words!r})[1 + ((i * 7 + k * 13 + k * k) % {len(words)})]), 'string_agg', ' ')
                       || '. Review number ' || i || '.' AS body,
                   TIMESTAMP '2026-01-01 00:00:00' + INTERVAL (i % 100000) MINUTE AS created_at
            FROM range({rows}) t(i)
        ) TO '{path}' (HEADER, DELIMITER ',')
    """)
    con.close()


def write_project(root: Path, csv_path: Path, memory_limit: str, threads: int) -> None:
    files = {
        "batchflow_project.yml": """
            name: bench
            profile: bench
            models:
              bench:
                +materialized: table
            batch:
              max_rows_per_job: 200000
              max_concurrent_jobs: 2
        """,
        "profiles.yml": f"""
            bench:
              target: local
              outputs:
                local:
                  type: duckdb
                  path: target/warehouse.duckdb
                  schema: bench
                  threads: {threads}
                  memory_limit: {memory_limit}
                  batch:
                    backend: local
                    provider: mock
                    concurrency: 2
                    chunk_size: 5000
        """,
        "models/sources.yml": f"""
            version: 2
            sources:
              - name: shop
                schema: shop_raw
                tables:
                  - name: reviews
                    sample: {csv_path}
        """,
        "models/stg_reviews.sql": """
            select review_id, product_id, body from {{ source('shop', 'reviews') }}
        """,
        "models/review_requests.sql": f"""
            {{{{ config(materialized='batch', model='{MODEL}', key='review_id') }}}}
            select
                review_id,
                product_id,
                {{{{ gemini_request(
                    prompt="concat('Classify the sentiment of this review: ', body)",
                    system_instruction='{SYSTEM}',
                    generation_config={{'temperature': 0.0, 'maxOutputTokens': 256}},
                    response_schema={GEN_CONFIG['responseSchema']!r}
                ) }}}} as request
            from {{{{ ref('stg_reviews') }}}}
        """,
        "models/review_labels.sql": """
            select
                review_id,
                {{ response_text('response') }} as answer,
                {{ json_field('response', '$.sentiment') }} as sentiment,
                {{ row_outcome('response', 'status') }} as outcome,
                {{ finish_reason('response') }} as finish_reason,
                {{ usage_tokens('response', 'totalTokenCount') }} as total_tokens
            from {{ ref('review_requests') }}
        """,
        "models/review_safety.sql": """
            select review_id, rating.category, rating.probability, rating.probability_score, rating.blocked
            from {{ ref('review_requests') }},
                unnest({{ safety_ratings('response') }}) as rating
        """,
    }
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text).lstrip())


# ----------------------------------------------------------------------------------------------------
# the three contenders (each runs in its own child process: `python bench_pipeline.py --child KIND`)

BATCHFLOW_CHILD = r"""
import json, sys, time
from pathlib import Path
timings = {}

def timed(owner, name, label):
    original = getattr(owner, name, None)
    if original is None:
        return
    def wrapper(*args, **kwargs):
        started = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            timings[label] = timings.get(label, 0.0) + time.perf_counter() - started
    setattr(owner, name, wrapper)

from batchflow import lifecycle
L = lifecycle.BatchLifecycle
# one method per plan stage (batchflow.batch_stages); shard, submit, wait and land are the execute stage
for name, label in [("_build", "build"), ("_validate", "validate"), ("_collect", "diff"), ("_diff", "diff"),
                    ("_estimate", "diff"), ("_shard", "execute"), ("_submit", "execute"), ("_wait", "execute"),
                    ("_land", "execute"), ("_results", "results"), ("_report", "results")]:
    timed(L, name, label)
from batchflow.warehouse import duckdb as wh
timed(wh.DuckDBWarehouse, "load_csv", "load_sample")
from batchflow.artifacts import batchflow_results
from batchflow.cli import app
project = sys.argv[1]
started = time.perf_counter()
try:
    app(["build", "--project-dir", project, "--log-format", "json"], standalone_mode=False)
except SystemExit as exc:
    if exc.code not in (0, None):
        raise
timings["total"] = time.perf_counter() - started
results = batchflow_results(json.loads((Path(project) / "target" / "run_results.json").read_text()))
nodes = {r["name"]: r for r in results}
timings["nodes"] = {n: r["execution_time"] for n, r in nodes.items()}
timings["spans"] = {n: [r["started_at"], r["completed_at"]] for n, r in nodes.items()}
timings["rows"] = {n: r.get("rows") for n, r in nodes.items()}
timings["batch"] = nodes["review_requests"].get("batch")
timings["failed"] = {n: r["message"][:300] for n, r in nodes.items() if r["status"] != "success"}
print("BENCH_JSON " + json.dumps(timings))
"""


def child_duckdb(csv_path: str, db_path: str, memory_limit: str, threads: int) -> dict:
    import duckdb

    t: dict = {}
    con = duckdb.connect(db_path)
    con.execute(f"SET memory_limit = '{memory_limit}'")
    con.execute(f"SET threads = {threads}")
    con.execute("SET TimeZone = 'UTC'")

    def step(label: str, sql: str) -> None:
        started = time.perf_counter()
        con.execute(sql).fetchall()
        t[label] = t.get(label, 0.0) + time.perf_counter() - started

    step("load_sample", f"CREATE TABLE reviews AS SELECT * FROM read_csv('{csv_path}', header = true)")
    step("load_sample", "CREATE TABLE stg_reviews AS SELECT review_id, product_id, body FROM reviews")
    gen = json.dumps({**GEN_CONFIG, "temperature": 0.0})
    step("build", f"""
        CREATE TABLE requests AS
        SELECT review_id, product_id, request,
               sha256(CAST(request AS VARCHAR) || '\n' || '{MODEL}') AS request_hash
        FROM (SELECT review_id, product_id,
                     json_object('contents', json_array(json_object('role', 'user', 'parts',
                                 json_array(json_object('text', concat('Classify the sentiment of this review: ', body))))),
                                 'systemInstruction', json_object('parts', json_array(json_object('text', '{SYSTEM}'))),
                                 'generationConfig', json('{gen}')) AS request
              FROM stg_reviews)
    """)
    step("validate", """
        SELECT count(*) FROM requests
        WHERE json_type(request -> '$.contents') <> 'ARRAY' OR json_array_length(request -> '$.contents') = 0
           OR (request ->> '$.contents[0].role') NOT IN ('user', 'model')
    """)
    step("diff", "CREATE TABLE todo AS SELECT request_hash, any_value(request) AS request FROM requests GROUP BY 1")
    step("execute", """
        CREATE TABLE answers AS
        SELECT request_hash, request,
               json_object('candidates', json_array(json_object(
                   'content', json_object('role', 'model', 'parts', json_array(json_object('text',
                       json_object('sentiment', ['positive', 'negative', 'mixed'][CAST(1 + hash(request_hash) % 3 AS BIGINT)],
                                   'summary', 'summary ' || (hash(request_hash) % 1000))::VARCHAR))),
                   'finishReason', 'STOP',
                   'safetyRatings', json_array(
                       json_object('category', 'HARM_CATEGORY_HATE_SPEECH', 'probability', 'NEGLIGIBLE', 'probabilityScore', 0.01),
                       json_object('category', 'HARM_CATEGORY_DANGEROUS_CONTENT', 'probability', 'NEGLIGIBLE', 'probabilityScore', 0.02),
                       json_object('category', 'HARM_CATEGORY_HARASSMENT', 'probability', 'NEGLIGIBLE', 'probabilityScore', 0.03),
                       json_object('category', 'HARM_CATEGORY_SEXUALLY_EXPLICIT', 'probability', 'NEGLIGIBLE', 'probabilityScore', 0.04)))),
                   'usageMetadata', json_object('promptTokenCount', 20, 'candidatesTokenCount', 10, 'totalTokenCount', 30),
                   'modelVersion', 'gemini-2.5-flash-001') AS response,
               '' AS status, now() AS processed_time
        FROM todo
    """)
    step("results", """
        CREATE TABLE review_requests AS
        SELECT q.*, a.response, a.status, a.processed_time FROM requests q LEFT JOIN answers a USING (request_hash)
    """)
    step("flatten", """
        CREATE TABLE review_labels AS
        SELECT review_id,
               response ->> '$.candidates[0].content.parts[0].text' AS answer,
               json_extract_string(response ->> '$.candidates[0].content.parts[0].text', '$.sentiment') AS sentiment,
               CASE WHEN status <> '' OR response IS NULL THEN 'row_error'
                    WHEN response ->> '$.candidates[0].finishReason' = 'STOP' THEN 'ok'
                    ELSE 'candidate_blocked' END AS outcome,
               response ->> '$.candidates[0].finishReason' AS finish_reason,
               TRY_CAST(response ->> '$.usageMetadata.totalTokenCount' AS BIGINT) AS total_tokens
        FROM review_requests
    """)
    step("flatten", """
        CREATE TABLE review_safety AS
        SELECT review_id, r ->> '$.category' AS category, r ->> '$.probability' AS probability,
               TRY_CAST(r ->> '$.probabilityScore' AS DOUBLE) AS probability_score,
               coalesce(TRY_CAST(r ->> '$.blocked' AS BOOLEAN), false) AS blocked
        FROM (SELECT review_id, unnest(CAST(response -> '$.candidates[0].safetyRatings' AS JSON[])) AS r
              FROM review_requests)
    """)
    t["rows"] = {"review_labels": con.execute("SELECT count(*) FROM review_labels").fetchone()[0],
                 "review_safety": con.execute("SELECT count(*) FROM review_safety").fetchone()[0]}
    con.close()
    return t


def child_pandas(csv_path: str) -> dict:
    """A hand-written batch script: one row at a time, as people write them."""
    import pandas as pd

    sys.path.insert(0, str(REPO))
    from batchflow.batch.providers.mock import MockProvider

    t: dict = {}
    started = time.perf_counter()
    df = pd.read_csv(csv_path)
    t["load_sample"] = time.perf_counter() - started

    started = time.perf_counter()
    requests = []
    for _, row in df.iterrows():
        requests.append({
            "review_id": row["review_id"],
            "request": json.dumps({
                "contents": [{"role": "user", "parts": [{"text": "Classify the sentiment of this review: " + row["body"]}]}],
                "systemInstruction": {"parts": [{"text": SYSTEM}]},
                "generationConfig": GEN_CONFIG,
            }),
        })
    t["build"] = time.perf_counter() - started

    started = time.perf_counter()
    provider = MockProvider()
    answers = []
    for item in requests:
        result = provider.generate(MODEL, [json.loads(item["request"])])[0]
        answers.append({**item, "response": result.response_text(), "status": result.status or ""})
    t["execute"] = time.perf_counter() - started

    started = time.perf_counter()
    labels, safety = [], []
    for a in answers:
        response = json.loads(a["response"]) if a["response"] else None
        candidate = (response or {}).get("candidates", [{}])[0]
        text = "".join(p.get("text", "") for p in candidate.get("content", {}).get("parts", []) if not p.get("thought"))
        try:
            sentiment = json.loads(text).get("sentiment")
        except ValueError:
            sentiment = None
        labels.append({
            "review_id": a["review_id"], "answer": text, "sentiment": sentiment,
            "outcome": "ok" if candidate.get("finishReason") == "STOP" and not a["status"] else "row_error",
            "finish_reason": candidate.get("finishReason"),
            "total_tokens": (response or {}).get("usageMetadata", {}).get("totalTokenCount"),
        })
        for r in candidate.get("safetyRatings", []):
            safety.append({"review_id": a["review_id"], "category": r.get("category"),
                           "probability": r.get("probability"), "probability_score": r.get("probabilityScore"),
                           "blocked": bool(r.get("blocked", False))})
    labels_df, safety_df = pd.DataFrame(labels), pd.DataFrame(safety)
    t["flatten"] = time.perf_counter() - started
    t["rows"] = {"review_labels": len(labels_df), "review_safety": len(safety_df)}
    return t


# ----------------------------------------------------------------------------------------------------
# parent


def run_child(argv: list[str], env: dict[str, str], cwd: Path) -> tuple[dict, float, float]:
    started = time.perf_counter()
    proc = subprocess.Popen(argv, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    out = proc.stdout.read() if proc.stdout else b""
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - started
    code = os.waitstatus_to_exitcode(status)
    text = out.decode(errors="replace")
    marker = [line for line in text.splitlines() if line.startswith("BENCH_JSON ")]
    if code != 0 or not marker:
        sys.exit(f"error: {' '.join(argv[:3])} ... exited {code}:\n{text[-4000:]}")
    return json.loads(marker[-1][len("BENCH_JSON "):]), wall, usage.ru_maxrss / 1024


STAGES = ("load_sample", "build", "validate", "diff", "execute", "results", "flatten")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--memory-limit", default="1GB", help="DuckDB memory_limit for batchflow and the floor")
    parser.add_argument("--threads", type=int, default=2, help="DuckDB threads / batchflow threads")
    parser.add_argument("--skip-pandas", action="store_true")
    parser.add_argument("--workdir", help="keep files here (default: a temp dir, removed)")
    parser.add_argument("--json", help="also write the figures to this JSON file")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("child_args", nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child == "duckdb":
        print("BENCH_JSON " + json.dumps(child_duckdb(*args.child_args[:2], args.memory_limit, args.threads)))
        return
    if args.child == "pandas":
        print("BENCH_JSON " + json.dumps(child_pandas(args.child_args[0])))
        return

    work = Path(args.workdir).resolve() if args.workdir else Path(tempfile.mkdtemp(prefix="bf-bench-pipeline-"))
    if args.workdir and work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env["PYTHONPYCACHEPREFIX"] = str(work / "pycache")
    env.pop("BATCHFLOW_PARTIAL_PARSE", None)
    try:
        csv_path = work / "data" / "reviews.csv"
        csv_path.parent.mkdir(parents=True)
        started = time.perf_counter()
        make_csv(csv_path, args.rows)
        print(f"{args.rows:,} rows of synthetic reviews ({csv_path.stat().st_size / 1e6:.0f} MB CSV) in "
              f"{time.perf_counter() - started:.1f}s; python {sys.version.split()[0]}, {os.cpu_count()} cpu(s), "
              f"DuckDB memory_limit {args.memory_limit}", flush=True)
        project = work / "project"
        write_project(project, csv_path, args.memory_limit, args.threads)

        results: dict[str, tuple[dict, float, float]] = {}
        print("batchflow build ...", flush=True)
        results["batchflow"] = run_child([sys.executable, "-c", BATCHFLOW_CHILD, str(project)], env, work)
        print("plain DuckDB ...", flush=True)
        results["duckdb"] = run_child(
            [sys.executable, __file__, "--child", "duckdb", "--memory-limit", args.memory_limit,
             "--threads", str(args.threads), str(csv_path), str(work / "floor.duckdb")], env, work)
        if not args.skip_pandas:
            print("naive pandas ...", flush=True)
            results["pandas"] = run_child([sys.executable, __file__, "--child", "pandas", str(csv_path)], env, work)
        report(args.rows, results, args.json)
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)


def report(rows: int, results: dict[str, tuple[dict, float, float]], json_path: str | None) -> None:
    bf = results["batchflow"][0]
    floor = results["duckdb"][0]
    if bf.get("failed"):
        print(f"\n**batchflow run FAILED** (figures below cover the stages that ran): {bf['failed']}")
    # The two flatten models are independent and run side by side (threads: 2), so the stage's time
    # is the wall span from the first one's start to the last one's end, not the sum of their times.
    flatten_nodes = [n for n in ("review_labels", "review_safety") if n in bf["spans"]]
    flatten_sum = sum(bf["nodes"][n] for n in flatten_nodes)
    bf["flatten"] = 0.0
    if flatten_nodes:
        starts = [datetime.fromisoformat(bf["spans"][n][0]) for n in flatten_nodes]
        ends = [datetime.fromisoformat(bf["spans"][n][1]) for n in flatten_nodes]
        bf["flatten"] = (max(ends) - min(starts)).total_seconds()
    kinds = list(results)
    print(f"\n### {rows:,} rows: seconds per stage (rows/s)\n")
    print("| stage | " + " | ".join(kinds) + " | batchflow / DuckDB |")
    print("|---|" + "---:|" * (len(kinds) + 1))
    for stage in STAGES:
        cells = []
        for kind in kinds:
            seconds = results[kind][0].get(stage)
            cells.append("–" if seconds is None else f"{seconds:.2f} ({rows / seconds:,.0f}/s)" if seconds > 0 else "0")
        b, f = bf.get(stage), floor.get(stage)
        ratio = f"{b / f:.1f}x" if b and f else "–"
        print(f"| {stage} | " + " | ".join(cells) + f" | {ratio} |")
    request_building = sum(bf.get(s, 0.0) for s in ("build", "validate", "diff"))
    floor_building = sum(floor.get(s, 0.0) for s in ("build", "validate", "diff"))
    print(f"| **request building** (build+validate+diff) | {request_building:.2f} "
          f"({rows / request_building:,.0f}/s) | {floor_building:.2f} | "
          + ("" if "pandas" not in results else f"{results['pandas'][0]['build']:.2f} | ")
          + f"{request_building / floor_building:.1f}x |")
    print("\n| process | wall s | peak RSS MB |\n|---|---:|---:|")
    for kind, (_, wall, rss) in results.items():
        print(f"| {kind} | {wall:.1f} | {rss:.0f} |")
    print(f"\nbatchflow nodes (execution_time s): " + ", ".join(f"{n} {s:.2f}" for n, s in bf["nodes"].items()))
    if flatten_nodes:
        print(f"batchflow flatten: wall span {bf['flatten']:.2f} s, sum of the two models' times {flatten_sum:.2f} s "
              f"(they run side by side; the floor runs them one after the other): {flatten_sum / floor['flatten']:.1f}x "
              "the floor by the sum")
    print(f"batchflow stage sum inside review_requests: " + ", ".join(
        f"{s} {bf[s]:.2f}" for s in ("build", "validate", "diff", "execute", "results") if s in bf))
    print(f"rows: batchflow {bf['rows']}, floor {floor['rows']}")
    ex = bf.get("execute")
    print("\n### targets\n")
    print(f"- request building within 2x of plain DuckDB: {request_building / floor_building:.1f}x "
          f"({'met' if request_building <= 2 * floor_building else 'MISSED'})")
    if bf["flatten"]:
        print(f"- flattening within 2x of plain DuckDB: {bf['flatten'] / floor['flatten']:.1f}x "
              f"({'met' if bf['flatten'] <= 2 * floor['flatten'] else 'MISSED'})")
    else:
        print("- flattening within 2x of plain DuckDB: not measured (the flatten models did not run)")
    if ex:
        print(f"- executor >= 50,000 rows/s with the mock: {rows / ex:,.0f} rows/s ({'met' if rows / ex >= 50_000 else 'MISSED'})")
    rss = results["batchflow"][2]
    print(f"- peak RSS < 1.5 GB: {rss:.0f} MB ({'met' if rss < 1536 else 'MISSED'})")
    if json_path:
        Path(json_path).write_text(json.dumps({k: {"stages": v[0], "wall": v[1], "rss_mb": v[2]}
                                               for k, v in results.items()}, indent=2))


if __name__ == "__main__":
    main()
