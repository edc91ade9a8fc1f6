"""`batchflow init`: a starter project that `batchflow build` runs offline on the `local` target.

Support tickets (a sample CSV standing in for a BigQuery source table) → a staging view → one Gemini
request per ticket in JSON mode → a flatten model with the label, outcome and tokens, and yml tests.
"""

from __future__ import annotations

from pathlib import Path

from batchflow.errors import ConfigError

PROJECT_FILE = """\
# A batchflow project: dbt-style SQL models, plus batch models answered by Gemini batch prediction.
name: {name}
profile: {name}

model-paths: [models]
macro-paths: [macros]
seed-paths: [seeds]

models:
  {name}:
    staging:
      +materialized: view
    requests:
      +materialized: batch
      +tags: [llm]
    marts:
      +materialized: table

# Defaults for every batch model; a model's config() overrides them.
batch:
  max_rows_per_job: 100000
  max_concurrent_jobs: 2
  # Batch prices in USD per million tokens; check Google's price list.
  prices:
    gemini-2.5-flash: {{input_per_million: 0.15, output_per_million: 1.25}}
"""

PROFILES = """\
{name}:
  target: local
  outputs:
    # DuckDB in target/ and the local batch executor with the deterministic mock provider:
    # runs offline and costs nothing. Its answers are not real model output.
    local:
      type: duckdb
      path: target/batchflow.duckdb
      schema: {name}
      threads: 4
      batch:
        backend: local
        provider: mock

    # Production: BigQuery in, Vertex AI Gemini batch jobs, BigQuery out. Uncomment, set your
    # project, then `batchflow debug --target prod` and `batchflow run --target prod --dry-run`.
    # prod:
    #   type: bigquery
    #   method: oauth                 # application default credentials
    #   project: my-gcp-project
    #   dataset: {name}
    #   location: us-central1         # batch jobs need a regional dataset
    #   threads: 8
    #   batch:
    #     backend: vertex
    #     location: us-central1
"""

SOURCES = """\
version: 2

sources:
  - name: support
    description: Raw support tables, loaded by the help desk's export.
    schema: support_raw
    tables:
      - name: tickets
        description: One row per support ticket.
        sample: ../data/tickets.csv     # stands in for the BigQuery table on the local target
        columns:
          - name: ticket_id
            description: Primary key.
          - name: body
            description: What the customer wrote.
"""

SCHEMA = """\
version: 2

models:
  - name: stg_tickets
    description: Tickets with blank bodies removed.
    columns:
      - name: ticket_id
        description: Primary key.
        tests: [not_null, unique]
  - name: ticket_requests
    description: Batch model. One Gemini request per ticket asking for its urgency.
  - name: ticket_labels
    description: Urgency per ticket, with the request outcome and token usage.
    columns:
      - name: ticket_id
        tests: [not_null, unique]
      - name: outcome
        tests:
          - accepted_values:
              values: [ok, row_error, prompt_blocked, candidate_blocked, truncated, missing]
"""

STAGING = """\
-- Clean tickets: trimmed text, blank ones dropped.
select
    ticket_id,
    trim(body) as body,
    cast(created_at as timestamp) as created_at
from {{ source('support', 'tickets') }}
where length(trim(body)) > 0
"""

REQUESTS = """\
{{ config(materialized='batch', model='gemini-2.5-flash', key='ticket_id') }}
-- One Gemini request per ticket, in JSON mode. `batchflow show -s ticket_requests` shows each prompt
-- next to its answer.
select
    ticket_id,
    {{ gemini_request(
        prompt="concat('How urgent is this support ticket? ', body)",
        system_instruction='You triage support tickets. Answer with JSON only.',
        generation_config={'temperature': 0.0, 'maxOutputTokens': 128},
        response_schema={
            'type': 'OBJECT',
            'properties': {'urgency': {'type': 'STRING', 'enum': ['low', 'medium', 'high']}},
            'required': ['urgency']
        }
    ) }} as request
from {{ ref('stg_tickets') }}
"""

FLATTEN = """\
-- One row per ticket with the model's label and how the request went.
select
    ticket_id,
    {{ json_field('response', '$.urgency') }} as urgency,
    {{ row_outcome('response', 'status') }} as outcome,
    {{ usage_tokens('response', 'totalTokenCount') }} as total_tokens
from {{ ref('ticket_requests') }}
"""

SAMPLE = """\
ticket_id,body,created_at
T001,"The checkout page crashes every time I pay, customers cannot order.",2026-01-05 09:12:00
T002,"Could you add a dark mode to the dashboard some day?",2026-01-05 10:40:00
T003,"I was charged twice for my subscription this month.",2026-01-06 08:03:00
T004,"How do I change the email address on my account?",2026-01-06 14:27:00
T005,"Our API key stopped working after the update, all integrations are down.",2026-01-07 07:55:00
T006,"   ",2026-01-07 11:00:00
"""

GITIGNORE = "target/\n"


def starter_files(name: str) -> dict[str, str]:
    """Relative path → content of every file `init` writes."""
    return {
        "batchflow_project.yml": PROJECT_FILE.format(name=name),
        "profiles.yml": PROFILES.format(name=name),
        "models/sources.yml": SOURCES,
        "models/schema.yml": SCHEMA,
        "models/staging/stg_tickets.sql": STAGING,
        "models/requests/ticket_requests.sql": REQUESTS,
        "models/marts/ticket_labels.sql": FLATTEN,
        "data/tickets.csv": SAMPLE,
        "macros/.gitkeep": "",
        "seeds/.gitkeep": "",
        ".gitignore": GITIGNORE,
    }


def write_starter(root: Path, name: str, force: bool = False) -> list[Path]:
    """Write the starter project into `root` (created if missing). Refuses to overwrite an existing
    project file unless `force`; returns the files written."""
    if not name.isidentifier():
        raise ConfigError(f"project name {name!r} must be a valid identifier (letters, digits, underscores)")
    files = starter_files(name)
    existing = [rel for rel in files if (root / rel).exists() and (root / rel).read_text() != files[rel]]
    if existing and not force:
        raise ConfigError(f"{root} already has {', '.join(existing)}; use --force to overwrite, or pick an empty folder")
    written = []
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        written.append(path)
    return written
