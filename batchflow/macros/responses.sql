{#- Response flatteners: BigQuery expressions over the batch output table's `response` and `status`.

    `response` may be JSON or STRING typed, and either shape Vertex has written:
    a GenerateContentResponse object ({"candidates": [...], "usageMetadata": ..., "modelVersion": ...})
    or, in 2024-era tables, the bare candidates array ([{...candidate...}]). Candidate fields are read
    from `$.candidates[0]` and, failing that, `$[0]`: a path that does not match yields NULL, so
    this works for both shapes without JSON_TYPE (which BigQuery only accepts on JSON values). -#}

{# bf_candidate_path(response, fn, path): fn(response, <candidate 0 path + path>) for both shapes.
   Internal helper; fn is JSON_VALUE, JSON_QUERY or JSON_QUERY_ARRAY. #}
{% macro bf_candidate_path(response, fn, path) -%}
COALESCE({{ fn }}({{ response }}, '$.candidates[0]{{ path }}'), {{ fn }}({{ response }}, '$[0]{{ path }}'))
{%- endmacro %}

{# response_text(response) -> STRING: the text parts of candidate 0 concatenated in order, skipping
   parts marked "thought": true (thinking models); NULL when there is no text. #}
{% macro response_text(response) -%}
{%- if target is defined and target.type == 'duckdb' -%}
bf_response_text({{ response }})
{%- else -%}
(SELECT NULLIF(STRING_AGG(JSON_VALUE(bf_part, '$.text'), '' ORDER BY bf_part_offset), '')
 FROM UNNEST({{ bf_candidate_path(response, 'JSON_QUERY_ARRAY', '.content.parts') }}) AS bf_part WITH OFFSET AS bf_part_offset
 WHERE COALESCE(JSON_VALUE(bf_part, '$.thought'), 'false') != 'true')
{%- endif %}
{%- endmacro %}

{# finish_reason(response) -> STRING: candidate 0's finishReason (STOP, MAX_TOKENS, SAFETY, RECITATION, ...). #}
{% macro finish_reason(response) -%}
{{ bf_candidate_path(response, 'JSON_VALUE', '.finishReason') }}
{%- endmacro %}

{# block_reason(response) -> STRING: promptFeedback.blockReason (set when the prompt was blocked). #}
{% macro block_reason(response) -%}
JSON_VALUE({{ response }}, '$.promptFeedback.blockReason')
{%- endmacro %}

{# model_version(response) -> STRING: the modelVersion that answered (NULL in the legacy shape). #}
{% macro model_version(response) -%}
JSON_VALUE({{ response }}, '$.modelVersion')
{%- endmacro %}

{# row_outcome(response, status, request=none) -> STRING, the first that applies (for an embedding
   model, pass its `predictions` as `response`: its rows are 'missing', 'row_error' (a status, or no
   vector), 'truncated' (statistics.truncated: the text was cut to the model's input limit) or 'ok'):
     'missing'           response and status are both NULL: the row was sent and its job left it out of
                         the output (EXPIRED, CANCELLED, PARTIALLY_SUCCEEDED, a lost local job), or it
                         was never answered;
     'row_error'         status is non-empty, or response is NULL, or the response holds neither a
                         candidate nor a blockReason (an empty answer);
     'prompt_blocked'    no candidate, promptFeedback.blockReason set;
     'candidate_blocked' finishReason is a content-policy stop (SAFETY, RECITATION, BLOCKLIST,
                         PROHIBITED_CONTENT, SPII, IMAGE_SAFETY, IMAGE_PROHIBITED_CONTENT,
                         IMAGE_RECITATION), or the candidate has no text and its finishReason is
                         anything but STOP / MAX_TOKENS (OTHER, LANGUAGE, MALFORMED_FUNCTION_CALL,
                         NO_IMAGE, ..., or missing);
     'truncated'         finishReason MAX_TOKENS;
     'invalid_json'      (only when `request` is given) the request asked for JSON
                         (responseMimeType application/json) and the answer text does not parse;
     'ok'                otherwise (including STOP with only function-call parts). #}
{% macro row_outcome(response, status, request=none) -%}
{%- if request and target is defined and target.type == 'duckdb' -%}
bf_row_outcome_json({{ response }}, {{ status }}, {{ request }})
{%- elif target is defined and target.type == 'duckdb' -%}
bf_row_outcome({{ response }}, {{ status }})
{%- elif request -%}
CASE
    WHEN ({{ bf_row_outcome_bq(response, status) }}) = 'ok'
         AND LOWER(COALESCE(JSON_VALUE({{ request }}, '$.generationConfig.responseMimeType'),
                            JSON_VALUE({{ request }}, '$.generation_config.response_mime_type'), '')) = 'application/json'
         AND SAFE.PARSE_JSON({{ response_text(response) }}) IS NULL THEN 'invalid_json'
    ELSE {{ bf_row_outcome_bq(response, status) }}
END
{%- else -%}
{{ bf_row_outcome_bq(response, status) }}
{%- endif %}
{%- endmacro %}

{# bf_row_outcome_bq(response, status): row_outcome in BigQuery SQL. Internal helper. #}
{% macro bf_row_outcome_bq(response, status) -%}
CASE
    WHEN {{ status }} IS NULL AND {{ response }} IS NULL THEN 'missing'
    WHEN COALESCE({{ status }}, '') != '' OR {{ response }} IS NULL THEN 'row_error'
    WHEN {{ bf_candidate_path(response, 'JSON_QUERY', '') }} IS NULL THEN
        IF({{ block_reason(response) }} IS NOT NULL, 'prompt_blocked', 'row_error')
    WHEN {{ finish_reason(response) }} IN ('SAFETY', 'RECITATION', 'BLOCKLIST', 'PROHIBITED_CONTENT', 'SPII', 'IMAGE_SAFETY', 'IMAGE_PROHIBITED_CONTENT', 'IMAGE_RECITATION') THEN 'candidate_blocked'
    WHEN {{ finish_reason(response) }} = 'MAX_TOKENS' THEN 'truncated'
    WHEN {{ response_text(response) }} IS NULL AND COALESCE({{ finish_reason(response) }}, '') != 'STOP' THEN
        -- no text and no STOP: a blocked candidate, unless the row holds an embedding's predictions
        CASE
            WHEN JSON_QUERY({{ response }}, '$[0].embeddings') IS NULL THEN 'candidate_blocked'
            WHEN COALESCE(ARRAY_LENGTH(JSON_QUERY_ARRAY({{ response }}, '$[0].embeddings.values')), 0) = 0 THEN 'row_error'
            WHEN {{ embedding_truncated(response) }} THEN 'truncated'
            ELSE 'ok'
        END
    ELSE 'ok'
END
{%- endmacro %}

{# bf_status_error(status): the google.rpc error JSON inside a status text such as
   'Bad Request: {"error": {"code": 400, "message": "...", "status": "FAILED_PRECONDITION"}}'
   (from the first '{' to the last '}'); NULL when absent or not valid JSON. Internal helper. #}
{% macro bf_status_error(status) -%}
SAFE.PARSE_JSON(REGEXP_EXTRACT({{ status }}, r'(?s)(\{.*\})'))
{%- endmacro %}

{# status_reason(status) -> STRING: the HTTP reason phrase before the colon ('Bad Request',
   'Too Many Requests', ...); NULL for an empty status or one without a phrase. #}
{% macro status_reason(status) -%}
NULLIF(TRIM(REGEXP_EXTRACT({{ status }}, r'^([^:{]*):')), '')
{%- endmacro %}

{# status_code(status) -> INT64: the error's `code` (HTTP-style, e.g. 400, 429, 500) from the JSON,
   else derived from the reason phrase; NULL for an empty status or an unknown phrase. #}
{% macro status_code(status) -%}
COALESCE(
    SAFE_CAST(JSON_VALUE({{ bf_status_error(status) }}, '$.error.code') AS INT64),
    CASE {{ status_reason(status) }}
        WHEN 'Bad Request' THEN 400 WHEN 'Unauthorized' THEN 401 WHEN 'Forbidden' THEN 403
        WHEN 'Not Found' THEN 404 WHEN 'Conflict' THEN 409 WHEN 'Too Many Requests' THEN 429
        WHEN 'Internal Server Error' THEN 500 WHEN 'Not Implemented' THEN 501
        WHEN 'Bad Gateway' THEN 502 WHEN 'Service Unavailable' THEN 503 WHEN 'Gateway Timeout' THEN 504
    END)
{%- endmacro %}

{# status_name(status) -> STRING: the google.rpc status name (error.status), e.g. 'FAILED_PRECONDITION',
   'RESOURCE_EXHAUSTED', 'INVALID_ARGUMENT'; NULL when the status holds no JSON. #}
{% macro status_name(status) -%}
JSON_VALUE({{ bf_status_error(status) }}, '$.error.status')
{%- endmacro %}

{# status_message(status) -> STRING: error.message from the JSON, else the raw status text;
   NULL for an empty (successful) status. #}
{% macro status_message(status) -%}
IF(COALESCE({{ status }}, '') = '', NULL,
   COALESCE(JSON_VALUE({{ bf_status_error(status) }}, '$.error.message'), {{ status }}))
{%- endmacro %}

{# usage_tokens(response, field='totalTokenCount') -> INT64: usageMetadata.<field>, e.g.
   promptTokenCount, candidatesTokenCount, thoughtsTokenCount, cachedContentTokenCount. #}
{% macro usage_tokens(response, field='totalTokenCount') -%}
SAFE_CAST(JSON_VALUE({{ response }}, {{ sql_string('$.usageMetadata.' ~ field) }}) AS INT64)
{%- endmacro %}

{# safety_ratings(response) -> ARRAY<STRUCT<category STRING, probability STRING,
   probability_score FLOAT64, severity STRING, severity_score FLOAT64, blocked BOOL>>:
   candidate 0's safetyRatings in order (empty when absent); `blocked` is false unless set.
   Use as `FROM t, UNNEST({{ safety_ratings('response') }}) AS r`. #}
{% macro safety_ratings(response) -%}
{%- if target is defined and target.type == 'duckdb' -%}
bf_safety_ratings({{ response }})
{%- else -%}
ARRAY(
    SELECT AS STRUCT
        JSON_VALUE(bf_rating, '$.category') AS category,
        JSON_VALUE(bf_rating, '$.probability') AS probability,
        SAFE_CAST(JSON_VALUE(bf_rating, '$.probabilityScore') AS FLOAT64) AS probability_score,
        JSON_VALUE(bf_rating, '$.severity') AS severity,
        SAFE_CAST(JSON_VALUE(bf_rating, '$.severityScore') AS FLOAT64) AS severity_score,
        COALESCE(SAFE_CAST(JSON_VALUE(bf_rating, '$.blocked') AS BOOL), FALSE) AS blocked
    FROM UNNEST({{ bf_candidate_path(response, 'JSON_QUERY_ARRAY', '.safetyRatings') }}) AS bf_rating WITH OFFSET AS bf_rating_offset
    ORDER BY bf_rating_offset)
{%- endif %}
{%- endmacro %}

{# citations(response) -> ARRAY<STRUCT<start_index INT64, end_index INT64, uri STRING, title STRING,
   license STRING>>: candidate 0's citationMetadata.citations (Vertex) or .citationSources (Gemini
   API) in order; empty when absent. start_index defaults to 0 (proto3 JSON omits zeros). #}
{% macro citations(response) -%}
{%- if target is defined and target.type == 'duckdb' -%}
bf_citations({{ response }})
{%- else -%}
ARRAY(
    SELECT AS STRUCT
        COALESCE(SAFE_CAST(JSON_VALUE(bf_citation, '$.startIndex') AS INT64), 0) AS start_index,
        SAFE_CAST(JSON_VALUE(bf_citation, '$.endIndex') AS INT64) AS end_index,
        JSON_VALUE(bf_citation, '$.uri') AS uri,
        JSON_VALUE(bf_citation, '$.title') AS title,
        JSON_VALUE(bf_citation, '$.license') AS license
    FROM UNNEST(COALESCE(
        {{ bf_candidate_path(response, 'JSON_QUERY_ARRAY', '.citationMetadata.citations') }},
        {{ bf_candidate_path(response, 'JSON_QUERY_ARRAY', '.citationMetadata.citationSources') }})) AS bf_citation WITH OFFSET AS bf_citation_offset
    ORDER BY bf_citation_offset)
{%- endif %}
{%- endmacro %}

{# bf_answer_json(response): the answer text parsed as JSON (JSON-mode answers), tolerating a
   ```json fence around it; NULL when it is not valid JSON. Internal helper. #}
{% macro bf_answer_json(response) -%}
SAFE.PARSE_JSON(REGEXP_REPLACE({{ response_text(response) }}, r'^\s*```(?:json)?\s*|\s*```\s*$', ''))
{%- endmacro %}

{# bf_json_path(path): 'label' -> '$.label'; a path starting with '$' is kept. Internal helper. #}
{% macro bf_json_path(path) -%}
{{ sql_string(path if path.startswith('$') else '$.' ~ path) }}
{%- endmacro %}

{# json_field(response, path, type='STRING'): parse the answer text as JSON and extract `path`
   ('label', 'scores.overall', '$.items[0].name'), as type STRING, INT64, FLOAT64, BOOL or JSON.
   SAFE: NULL when the answer is not JSON, the path is missing or the value does not convert.
   An unknown type fails at compile time. #}
{% macro json_field(response, path, type='STRING') -%}
{%- set t = type | upper -%}
{%- if t == 'STRING' -%}
JSON_VALUE({{ bf_answer_json(response) }}, {{ bf_json_path(path) }})
{%- elif t in ('INT64', 'FLOAT64', 'BOOL') -%}
SAFE_CAST(JSON_VALUE({{ bf_answer_json(response) }}, {{ bf_json_path(path) }}) AS {{ t }})
{%- elif t == 'JSON' -%}
JSON_QUERY({{ bf_answer_json(response) }}, {{ bf_json_path(path) }})
{%- else -%}
{{ json_field_type_must_be_STRING_INT64_FLOAT64_BOOL_or_JSON(type) }}
{%- endif -%}
{%- endmacro %}

{# json_string_array(response, path) -> ARRAY<STRING>: the scalar values of a JSON array inside the
   JSON answer (e.g. 'labels' for {"labels": ["a", "b"]}); NULL when absent or not an array of scalars. #}
{% macro json_string_array(response, path) -%}
JSON_VALUE_ARRAY({{ bf_answer_json(response) }}, {{ bf_json_path(path) }})
{%- endmacro %}

{#- Embedding flatteners: expressions over an embedding batch model's `predictions` (JSON or JSON text)
    as Vertex writes it: [{"embeddings": {"statistics": {"token_count": 8, "truncated": false},
    "values": [0.0123, ...]}}]. NULL for a failed row (NULL predictions). -#}

{# embedding_values(predictions) -> ARRAY<FLOAT64>: the vector, in order (empty when absent). #}
{% macro embedding_values(predictions) -%}
{%- if target is defined and target.type == 'duckdb' -%}
bf_embedding_values({{ predictions }})
{%- else -%}
ARRAY(SELECT CAST(bf_value AS FLOAT64)
      FROM UNNEST(JSON_VALUE_ARRAY({{ predictions }}, '$[0].embeddings.values')) AS bf_value WITH OFFSET AS bf_value_offset
      ORDER BY bf_value_offset)
{%- endif %}
{%- endmacro %}

{# embedding_token_count(predictions) -> INT64: statistics.token_count, the tokens the model read. #}
{% macro embedding_token_count(predictions) -%}
SAFE_CAST(JSON_VALUE({{ predictions }}, '$[0].embeddings.statistics.token_count') AS INT64)
{%- endmacro %}

{# embedding_truncated(predictions) -> BOOL: statistics.truncated, true when the text was longer than
   the model reads (2,048 tokens) and was cut; false when absent from an answered row. #}
{% macro embedding_truncated(predictions) -%}
IF(JSON_QUERY({{ predictions }}, '$[0].embeddings') IS NULL, NULL,
   COALESCE(SAFE_CAST(JSON_VALUE({{ predictions }}, '$[0].embeddings.statistics.truncated') AS BOOL), FALSE))
{%- endmacro %}
