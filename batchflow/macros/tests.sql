{#- dbt's built-in generic data tests and the macros tests call, after dbt-core 1.11's global project
    (macros/generic_test_sql/*.sql, materializations/tests/where_subquery.sql, helpers.sql). A project
    or package overrides them as dbt allows: its own `{% macro test_unique(...) %}`, or `<adapter>__test_unique`
    through dispatch. The SQL is dialect-neutral; sqlglot transpiles it to the target. -#}

{% macro test_not_null(model, column_name) %}
    {{ return(adapter.dispatch('test_not_null', 'dbt')(model, column_name)) }}
{% endmacro %}
{% macro default__test_not_null(model, column_name) %}
{% set column_list = '*' if should_store_failures() else column_name %}
select {{ column_list }}
from {{ model }}
where {{ column_name }} is null
{% endmacro %}

{% macro test_unique(model, column_name) %}
    {{ return(adapter.dispatch('test_unique', 'dbt')(model, column_name)) }}
{% endmacro %}
{% macro default__test_unique(model, column_name) %}
select
    {{ column_name }} as unique_field,
    count(*) as n_records
from {{ model }}
where {{ column_name }} is not null
group by {{ column_name }}
having count(*) > 1
{% endmacro %}

{% macro test_accepted_values(model, column_name, values, quote=True) %}
    {{ return(adapter.dispatch('test_accepted_values', 'dbt')(model, column_name, values, quote)) }}
{% endmacro %}
{% macro default__test_accepted_values(model, column_name, values, quote=True) %}
with all_values as (
    select
        {{ column_name }} as value_field,
        count(*) as n_records
    from {{ model }}
    group by {{ column_name }}
)
select *
from all_values
where value_field not in (
    {% for value in values -%}
        {% if quote -%}
        '{{ value }}'
        {%- else -%}
        {{ value }}
        {%- endif -%}
        {%- if not loop.last -%},{%- endif %}
    {%- endfor %}
)
{% endmacro %}

{% macro test_relationships(model, column_name, to, field) %}
    {{ return(adapter.dispatch('test_relationships', 'dbt')(model, column_name, to, field)) }}
{% endmacro %}
{% macro default__test_relationships(model, column_name, to, field) %}
with child as (
    select {{ column_name }} as from_field
    from {{ model }}
    where {{ column_name }} is not null
),
parent as (
    select {{ field }} as to_field
    from {{ to }}
)
select
    from_field
from child
left join parent
    on child.from_field = parent.to_field
where parent.to_field is null
{% endmacro %}

{% macro get_where_subquery(relation) -%}
    {{ return(adapter.dispatch('get_where_subquery', 'dbt')(relation)) }}
{%- endmacro %}
{% macro default__get_where_subquery(relation) -%}
    {% set where = config.get('where', '') %}
    {% if where %}
        {%- set filtered -%}
            (select * from {{ relation }} where {{ where }}) dbt_subquery
        {%- endset -%}
        {{ return(filtered) }}
    {%- else -%}
        {{ return(relation) }}
    {%- endif -%}
{%- endmacro %}

{% macro should_store_failures() %}
    {% set config_store_failures = config.get('store_failures') %}
    {% if config_store_failures is none %}
        {% set config_store_failures = config.get('store_failures_as') in ('table', 'view') %}
    {% endif %}
    {{ return(config_store_failures) }}
{% endmacro %}

{% macro get_test_sql(main_sql, fail_calc, warn_if, error_if, limit) -%}
    {{ adapter.dispatch('get_test_sql', 'dbt')(main_sql, fail_calc, warn_if, error_if, limit) }}
{%- endmacro %}
{% macro default__get_test_sql(main_sql, fail_calc, warn_if, error_if, limit) -%}
    select
      {{ fail_calc }} as failures,
      {{ fail_calc }} {{ warn_if }} as should_warn,
      {{ fail_calc }} {{ error_if }} as should_error
    from (
      {{ main_sql }}
      {{ "limit " ~ limit if limit != none }}
    ) dbt_internal_test
{%- endmacro %}
