"""`batchflow show`: a few rows of a model, built or not.

A batch model is shown the way people iterate on prompts: key, prompt text, answer text, outcome and
tokens side by side. A model that is not built yet runs its compiled SELECT, with the models it reads
that are not built either inlined as CTEs (`compiler.inline_unbuilt`), as `run --dry-run` does.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from batchflow.errors import BatchflowError, ConfigError
from batchflow.seeds import missing_relation_hint

if TYPE_CHECKING:
    from batchflow.api import Session, ShowResult
    from batchflow.compiler import Node
    from batchflow.warehouse.base import Warehouse

#: the first user part's text: what the prompt builder put in (`gemini_request(prompt=...)`)
PROMPT_SQL = "JSON_VALUE(request, '$.contents[0].parts[0].text')"


def _keys(node: Node) -> list[str]:
    key = node.config.get("key") or []
    return [key] if isinstance(key, str) else list(key)


def sample_where(relation_sql: str, rows: int) -> str:
    """The rows of a sample: those of the `rows` distinct request hashes that sort first, the requests
    `run --sample` sends (it leaves invalid requests out first)."""
    return (f"request_hash IN (SELECT request_hash FROM (SELECT DISTINCT request_hash FROM {relation_sql} "
            f"WHERE request_hash IS NOT NULL) ORDER BY request_hash LIMIT {int(rows)})")


def batch_sql(session: Session, node: Node, limit: int, sample: int | None = None) -> str:
    """Prompt, answer, outcome and tokens of a built batch model's rows (BigQuery SQL); with `sample`,
    every row of that sample (`sample_where`) instead of the first `limit`."""
    macro = session.compiler.renderer.call_macro
    keys = ", ".join(_keys(node))
    where = f" WHERE {sample_where(node.relation.render(), sample)}" if sample else ""
    return (f"SELECT {keys + ', ' if keys else ''}{PROMPT_SQL} AS prompt, "
            f"{macro('response_text', 'response')} AS answer, "
            f"{macro('row_outcome', 'response', 'status')} AS outcome, "
            f"{macro('usage_tokens', 'response', 'totalTokenCount')} AS total_tokens, model_name, attempt "
            f"FROM {node.relation.render()}{where}" + (f" ORDER BY {keys}" if keys else "")
            + ("" if sample else f" LIMIT {int(limit)}"))


def _sample_rows(warehouse: Warehouse, relation_sql: str, sample: int | None, fraction: float | None) -> int | None:
    """--sample N as is; --sample-fraction p as ⌈p × distinct request hashes⌉, as a sampled run counts it."""
    if fraction is None:
        return sample
    count = warehouse.query_arrow(f"SELECT COUNT(DISTINCT request_hash) AS n FROM {relation_sql}").column("n")[0].as_py()
    return max(1, math.ceil(fraction * int(count or 0)))


def _load_samples(session: Session, warehouse: Warehouse, name: str) -> None:
    """Local target: the sources the model reads stand in as their sample CSVs, as in a run."""
    from batchflow.runner import load_source_samples
    from batchflow.seeds import load_seed

    if session.target.type != "duckdb":
        return
    seen, stack = set(), [name]
    while stack:
        current = stack.pop()
        if current in seen or current not in session.manifest.nodes:
            continue
        seen.add(current)
        stack.extend(session.manifest.nodes[current].depends_on)
    missing = {n for n in seen if warehouse.kind(session.manifest.nodes[n].relation) is None}
    kinds = {n: session.manifest.nodes[n].resource_type for n in missing}
    load_source_samples(session.manifest, warehouse, {n for n in missing if kinds[n] == "source"})
    for name in sorted(n for n in missing if kinds[n] == "seed"):  # seeds are nodes: a missing one is loaded
        load_seed(session.manifest, warehouse, name)


def show_rows(session: Session, model: str, limit: int, sample: int | None = None,
              sample_fraction: float | None = None) -> ShowResult:
    """The rows `batchflow show -s model` prints; `sample` / `sample_fraction`: a batch model's sample."""
    from batchflow.adapters import open_warehouse
    from batchflow.api import ShowResult
    from batchflow.compiler import inline_unbuilt

    if limit < 1:
        raise ConfigError("--limit must be 1 or more")
    node = session.manifest.node(model)
    if node.resource_type == "source":
        raise ConfigError(f"{model!r} is a source; show a model or seed that reads it")
    sampled = sample is not None or sample_fraction is not None
    if sampled and node.materialized != "batch":
        raise ConfigError(f"--sample picks a batch model's requests by their hash; {model!r} is a "
                          f"{node.materialized} model: use --limit (after a sampled run it holds the sample's rows)")
    warehouse = open_warehouse(session.target, session.project)
    try:
        built = node.materialized != "ephemeral" and warehouse.kind(node.relation) is not None
        if built and node.materialized == "batch":
            rows = _sample_rows(warehouse, node.relation.render(), sample, sample_fraction) if sampled else None
            sql, origin = batch_sql(session, node, limit, rows), "batch"
        elif built:
            sql, origin = f"SELECT * FROM {node.relation.render()} LIMIT {int(limit)}", "table"
        elif node.resource_type == "seed":
            raise ConfigError(f"seed {model!r} is not loaded yet: `batchflow seed -s {model}` loads it")
        else:
            _load_samples(session, warehouse, model)
            inner = inline_unbuilt(session.manifest, model, lambda n: warehouse.kind(n.relation) is not None)
            if node.materialized == "batch" and sampled:  # the requests a sampled run would send
                keys = ", ".join(_keys(node))
                llm = node.config.get("model") or session.project.batch_defaults.get("model") or ""
                hashed = f"(SELECT *, {warehouse.request_hash_sql('request', str(llm))} AS request_hash FROM ({inner}))"
                rows = _sample_rows(warehouse, hashed, sample, sample_fraction)
                sql = (f"SELECT {keys + ', ' if keys else ''}{PROMPT_SQL} AS prompt, request, request_hash "
                       f"FROM {hashed} WHERE {sample_where(hashed, rows)}" + (f" ORDER BY {keys}" if keys else ""))
            elif node.materialized == "batch":  # the requests it would send, with the prompt text pulled out
                keys = ", ".join(_keys(node))
                sql = (f"SELECT {keys + ', ' if keys else ''}{PROMPT_SQL} AS prompt, request "
                       f"FROM ({inner}) LIMIT {int(limit)}")
            else:
                sql = f"SELECT * FROM ({inner}) LIMIT {int(limit)}"
            origin = "compiled"
        try:
            table = warehouse.query_arrow(sql)
        except BatchflowError as exc:
            hint = missing_relation_hint(session.manifest, exc.message)
            raise type(exc)(f"{exc.message}\n{hint}" if hint else exc.message, node.path) from None
    finally:
        warehouse.close()
    rows: list[dict[str, Any]] = table.to_pylist()
    return ShowResult(model, list(table.column_names), rows, origin, sql)
