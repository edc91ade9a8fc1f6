{#- Request builders: SQL expressions producing the JSON `request` column of a batch model. -#}

{# gemini_request(prompt, system_instruction=none, generation_config=none, response_schema=none,
                  files=none, safety_settings=none)
   A JSON-typed GenerateContentRequest (plain REST JSON, camelCase keys):
     {"contents": [{"role": "user", "parts": [{"text": <prompt>}, {"fileData": {...}}, ...]}],
      "systemInstruction": {"parts": [{"text": ...}]}, "generationConfig": {...}, "safetySettings": [...]}
   - prompt: a SQL expression giving the user text, e.g. "concat('Classify: ', body)".
   - system_instruction: a Python string constant.
   - generation_config: a dict of REST keys (temperature, maxOutputTokens, ...), passed through as given.
   - response_schema: a dict (OpenAPI subset, REST `type` keys); sets generationConfig.responseSchema
     and responseMimeType 'application/json' unless generation_config already names a mime type.
   - files: a list of {'uri': <SQL expression giving a gs:// URI>, 'mime_type': '<literal>'}; each
     becomes a {"fileData": {"fileUri": ..., "mimeType": ...}} part after the text part.
   - safety_settings: a list of dicts such as {'category': 'HARM_CATEGORY_HATE_SPEECH',
     'threshold': 'BLOCK_ONLY_HIGH'}.
   Keys whose argument is none (or empty) are left out. #}
{% macro gemini_request(prompt, system_instruction=none, generation_config=none, response_schema=none, files=none, safety_settings=none) -%}
{%- set config = dict(generation_config or {}) -%}
{%- if response_schema is not none -%}
  {%- set config = dict(config, responseSchema=response_schema) -%}
  {%- if 'responseMimeType' not in config and 'response_mime_type' not in config -%}
    {%- set config = dict(config, responseMimeType='application/json') -%}
  {%- endif -%}
{%- endif -%}
JSON_OBJECT(
    'contents', JSON_ARRAY(JSON_OBJECT('role', 'user', 'parts', JSON_ARRAY(
        JSON_OBJECT('text', {{ prompt }})
        {%- for file in files or [] %},
        JSON_OBJECT('fileData', JSON_OBJECT('fileUri', {{ file['uri'] }}, 'mimeType', {{ sql_string(file['mime_type'] if 'mime_type' in file else file['mimeType']) }}))
        {%- endfor %})))
    {%- if system_instruction is not none %},
    'systemInstruction', JSON_OBJECT('parts', JSON_ARRAY(JSON_OBJECT('text', {{ sql_string(system_instruction) }})))
    {%- endif %}
    {%- if config %},
    'generationConfig', {{ json_literal(config) }}
    {%- endif %}
    {%- if safety_settings %},
    'safetySettings', {{ json_literal(safety_settings) }}
    {%- endif %}
)
{%- endmacro %}

{# embedding_request(content, task_type=none, title=none, output_dimensionality=none, auto_truncate=none)
   The JSON `request` of a text-embedding batch model (text-embedding-005, text-multilingual-embedding-002, ...):
     {"content": <text>, "task_type": "RETRIEVAL_DOCUMENT", "title": <text>,
      "parameters": {"outputDimensionality": 256, "autoTruncate": false}}
   - content: a SQL expression giving the one text to embed, e.g. "body".
   - task_type: a Python string constant (RETRIEVAL_QUERY, RETRIEVAL_DOCUMENT, SEMANTIC_SIMILARITY,
     CLASSIFICATION, CLUSTERING, QUESTION_ANSWERING, FACT_VERIFICATION, CODE_RETRIEVAL_QUERY).
   - title: a SQL expression (only with task_type RETRIEVAL_DOCUMENT).
   - output_dimensionality: an integer constant, 1 to 768 (the vector is cut to that many values);
     auto_truncate: false makes texts over 2,048 tokens fail instead of being truncated.
   The batch job sends `content`, `task_type` and `title` as its input columns and the parameters once
   per job (Vertex's modelParameters), so every row of a model must ask for the same parameters.
   Keys whose argument is none are left out. #}
{% macro embedding_request(content, task_type=none, title=none, output_dimensionality=none, auto_truncate=none) -%}
{%- set task = task_type | upper if task_type is not none else none -%}
{%- set tasks = ['RETRIEVAL_QUERY', 'RETRIEVAL_DOCUMENT', 'SEMANTIC_SIMILARITY', 'CLASSIFICATION', 'CLUSTERING', 'QUESTION_ANSWERING', 'FACT_VERIFICATION', 'CODE_RETRIEVAL_QUERY'] -%}
{%- if task is not none and task not in tasks -%}
  {{ exceptions.raise_compiler_error("embedding_request: task_type " ~ task_type ~ " is not one of " ~ tasks | join(', ')) }}
{%- endif -%}
{%- if title is not none and task != 'RETRIEVAL_DOCUMENT' -%}
  {{ exceptions.raise_compiler_error("embedding_request: title is only accepted with task_type='RETRIEVAL_DOCUMENT'") }}
{%- endif -%}
{%- if output_dimensionality is not none and (output_dimensionality is not number or output_dimensionality is sameas true or output_dimensionality is sameas false or output_dimensionality < 1 or output_dimensionality > 768 or output_dimensionality != (output_dimensionality | int)) -%}
  {{ exceptions.raise_compiler_error("embedding_request: output_dimensionality must be an integer from 1 to 768, got " ~ output_dimensionality) }}
{%- endif -%}
{%- if auto_truncate is not none and auto_truncate is not sameas true and auto_truncate is not sameas false -%}
  {{ exceptions.raise_compiler_error("embedding_request: auto_truncate must be true or false, got " ~ auto_truncate) }}
{%- endif -%}
{%- set parameters = {} -%}
{%- if output_dimensionality is not none -%}{%- set parameters = dict(parameters, outputDimensionality=output_dimensionality | int) -%}{%- endif -%}
{%- if auto_truncate is not none -%}{%- set parameters = dict(parameters, autoTruncate=auto_truncate) -%}{%- endif -%}
JSON_OBJECT(
    'content', {{ content }}
    {%- if task is not none %},
    'task_type', {{ sql_string(task) }}
    {%- endif %}
    {%- if title is not none %},
    'title', {{ title }}
    {%- endif %}
    {%- if parameters %},
    'parameters', {{ json_literal(parameters) }}
    {%- endif %}
)
{%- endmacro %}

{# embedding_request_problem(request) -> STRING: why one embedding request is invalid, NULL when it is
   fine: batchflow.requests.embedding_request_problem's rules (a Python UDF on DuckDB, this SQL on
   BigQuery; the messages are the same in substance). `request` may be JSON or STRING. Internal: the
   batch lifecycle validates an embedding model's rows with it before anything is sent. #}
{% macro embedding_request_problem(request) -%}
{%- if target is defined and target.type == 'duckdb' -%}
bf_embedding_request_problem(CAST({{ request }} AS STRING))
{%- else -%}
{%- set bf_j = "SAFE.PARSE_JSON(FORMAT('%t', " ~ request ~ "))" -%}
CASE
    WHEN {{ bf_j }} IS NULL THEN IF({{ request }} IS NULL, 'request is NULL', 'request is not valid JSON')
    WHEN JSON_TYPE({{ bf_j }}) != 'object' THEN CONCAT('request is not a JSON object (got ', JSON_TYPE({{ bf_j }}), ')')
    WHEN JSON_QUERY({{ bf_j }}, '$.contents') IS NOT NULL THEN 'request has `contents`, a Gemini request; an embedding model takes {{ "{{" }} embedding_request(content) {{ "}}" }}'
    WHEN EXISTS(SELECT 1 FROM UNNEST(JSON_KEYS({{ bf_j }}, 1)) AS bf_k WHERE bf_k NOT IN ('content', 'task_type', 'title', 'parameters'))
        THEN CONCAT('request has unknown key "', (SELECT MIN(bf_k) FROM UNNEST(JSON_KEYS({{ bf_j }}, 1)) AS bf_k WHERE bf_k NOT IN ('content', 'task_type', 'title', 'parameters')),
                    '" (an embedding request holds content, task_type, title, parameters)')
    WHEN JSON_QUERY({{ bf_j }}, '$.content') IS NULL OR JSON_TYPE(JSON_QUERY({{ bf_j }}, '$.content')) = 'null' THEN 'request has no `content` (the text to embed)'
    WHEN JSON_TYPE(JSON_QUERY({{ bf_j }}, '$.content')) = 'array' THEN CONCAT('`content` is an array of ', CAST(ARRAY_LENGTH(JSON_QUERY_ARRAY({{ bf_j }}, '$.content')) AS STRING), ' value(s): an embedding row embeds one text, give one row per text')
    WHEN JSON_TYPE(JSON_QUERY({{ bf_j }}, '$.content')) != 'string' THEN CONCAT('`content` is not a string (got ', JSON_TYPE(JSON_QUERY({{ bf_j }}, '$.content')), ')')
    WHEN TRIM(JSON_VALUE({{ bf_j }}, '$.content')) = '' THEN '`content` is empty'
    WHEN JSON_QUERY({{ bf_j }}, '$.task_type') IS NOT NULL AND JSON_TYPE(JSON_QUERY({{ bf_j }}, '$.task_type')) != 'null'
         AND COALESCE(JSON_VALUE({{ bf_j }}, '$.task_type'), '') NOT IN ('RETRIEVAL_QUERY', 'RETRIEVAL_DOCUMENT', 'SEMANTIC_SIMILARITY', 'CLASSIFICATION', 'CLUSTERING', 'QUESTION_ANSWERING', 'FACT_VERIFICATION', 'CODE_RETRIEVAL_QUERY')
        THEN CONCAT('`task_type` ', TO_JSON_STRING(JSON_QUERY({{ bf_j }}, '$.task_type')), ' is not a task type (RETRIEVAL_QUERY, RETRIEVAL_DOCUMENT, SEMANTIC_SIMILARITY, CLASSIFICATION, CLUSTERING, QUESTION_ANSWERING, FACT_VERIFICATION, CODE_RETRIEVAL_QUERY)')
    WHEN JSON_QUERY({{ bf_j }}, '$.title') IS NOT NULL AND JSON_TYPE(JSON_QUERY({{ bf_j }}, '$.title')) != 'null'
         AND JSON_TYPE(JSON_QUERY({{ bf_j }}, '$.title')) != 'string' THEN CONCAT('`title` is not a string (got ', JSON_TYPE(JSON_QUERY({{ bf_j }}, '$.title')), ')')
    WHEN JSON_VALUE({{ bf_j }}, '$.title') IS NOT NULL AND COALESCE(JSON_VALUE({{ bf_j }}, '$.task_type'), '') != 'RETRIEVAL_DOCUMENT'
        THEN '`title` is only accepted with task_type RETRIEVAL_DOCUMENT'
    WHEN JSON_QUERY({{ bf_j }}, '$.parameters') IS NOT NULL AND JSON_TYPE(JSON_QUERY({{ bf_j }}, '$.parameters')) NOT IN ('object', 'null')
        THEN CONCAT('`parameters` is not an object (got ', JSON_TYPE(JSON_QUERY({{ bf_j }}, '$.parameters')), ')')
    WHEN JSON_TYPE(JSON_QUERY({{ bf_j }}, '$.parameters')) = 'object' AND EXISTS(
            SELECT 1 FROM UNNEST(JSON_KEYS(JSON_QUERY({{ bf_j }}, '$.parameters'), 1)) AS bf_k WHERE bf_k NOT IN ('outputDimensionality', 'autoTruncate'))
        THEN '`parameters` has an unknown key (outputDimensionality, autoTruncate)'
    WHEN JSON_QUERY({{ bf_j }}, '$.parameters.outputDimensionality') IS NOT NULL
         AND JSON_TYPE(JSON_QUERY({{ bf_j }}, '$.parameters.outputDimensionality')) != 'null'
         AND NOT COALESCE(JSON_TYPE(JSON_QUERY({{ bf_j }}, '$.parameters.outputDimensionality')) = 'number'
                 AND SAFE_CAST(JSON_VALUE({{ bf_j }}, '$.parameters.outputDimensionality') AS INT64) BETWEEN 1 AND 768, FALSE)
        THEN CONCAT('`outputDimensionality` must be an integer from 1 to 768, got ', TO_JSON_STRING(JSON_QUERY({{ bf_j }}, '$.parameters.outputDimensionality')))
    WHEN JSON_QUERY({{ bf_j }}, '$.parameters.autoTruncate') IS NOT NULL
         AND JSON_TYPE(JSON_QUERY({{ bf_j }}, '$.parameters.autoTruncate')) NOT IN ('boolean', 'null')
        THEN CONCAT('`autoTruncate` must be true or false, got ', TO_JSON_STRING(JSON_QUERY({{ bf_j }}, '$.parameters.autoTruncate')))
END
{%- endif %}
{%- endmacro %}
