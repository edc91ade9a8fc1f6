{# The prompt for one review: product context first, then the customer's words. #}
{% macro review_prompt(product_name, body) %}
concat('Product: ', {{ product_name }}, '\nReview: ', {{ body }})
{% endmacro %}
