{#- Helpers shared by the built-in macros: render Python values as BigQuery SQL literals.
    Every built-in macro emits BigQuery Standard SQL; the DuckDB target transpiles it. -#}

{# sql_string(value): a BigQuery string literal holding `value` (converted with Jinja's `string`).
   Backslashes, single quotes, newlines, carriage returns and tabs are escaped, so any text is safe.
   none renders as NULL. #}
{% macro sql_string(value) -%}
{%- if value is none -%}NULL
{%- else -%}
'{{ value | string | replace('\\', '\\\\') | replace("'", "\\'") | replace('\n', '\\n') | replace('\r', '\\r') | replace('\t', '\\t') }}'
{%- endif -%}
{%- endmacro %}

{# bf_json_text(value): JSON text of a constant Python value (dict, list, str, int, float, bool,
   none), keys in the order given. Internal helper of json_literal. #}
{% macro bf_json_text(value) -%}
{%- if value is none -%}null
{%- elif value is sameas true -%}true
{%- elif value is sameas false -%}false
{%- elif value is string -%}
"{{ value | replace('\\', '\\\\') | replace('"', '\\"') | replace('\n', '\\n') | replace('\r', '\\r') | replace('\t', '\\t') | replace('\b', '\\b') | replace('\f', '\\f') }}"
{%- elif value is number -%}{{ value }}
{%- elif value is mapping -%}
{{ '{' }}{% for k, v in value.items() %}{{ bf_json_text(k | string) }}:{{ bf_json_text(v) }}{{ ',' if not loop.last }}{% endfor %}{{ '}' }}
{%- elif value is iterable -%}
[{% for v in value %}{{ bf_json_text(v) }}{{ ',' if not loop.last }}{% endfor %}]
{%- else -%}
{{ bf_json_text(value | string) }}
{%- endif -%}
{%- endmacro %}

{# json_literal(value): a BigQuery JSON literal (JSON '...') for a constant Python value. #}
{% macro json_literal(value) -%}
JSON {{ sql_string(bf_json_text(value)) }}
{%- endmacro %}
