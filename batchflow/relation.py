"""Names of warehouse relations, rendered in BigQuery syntax (the language models are written in)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Relation:
    """A table or view: `database` is the BigQuery project (None on DuckDB), `schema` the dataset."""

    database: str | None
    schema: str
    identifier: str

    def render(self) -> str:
        """BigQuery-quoted name, e.g. `` `proj`.`ds`.`t` `` or `` `ds`.`t` ``; sqlglot transpiles it."""
        parts = [p for p in (self.database, self.schema, self.identifier) if p]
        return ".".join(f"`{p}`" for p in parts)

    def with_identifier(self, identifier: str) -> "Relation":
        """A sibling relation in the same dataset (e.g. the `__requests` table of a batch model)."""
        return Relation(self.database, self.schema, identifier)

    @property
    def bq_uri(self) -> str:
        """`bq://project.dataset.table`, as Vertex batch jobs take it."""
        return f"bq://{self.database}.{self.schema}.{self.identifier}"

    def __str__(self) -> str:
        return ".".join(p for p in (self.database, self.schema, self.identifier) if p)


def string_literal(value: str | None) -> str:
    """A BigQuery string literal (or NULL) for a Python value."""
    if value is None:
        return "NULL"
    escaped = value.replace("\\", "\\\\").replace("'", "\\'").replace("\n", "\\n").replace("\r", "\\r")
    return f"'{escaped}'"
