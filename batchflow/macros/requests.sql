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
