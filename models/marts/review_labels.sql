-- One row per review with the model's labels and how the request went.
select
    review_id,
    product_id,
    created_at,
    {{ json_field('response', '$.sentiment') }} as sentiment,
    {{ json_field('response', '$.summary') }} as summary,
    {{ row_outcome('response', 'status') }} as outcome,
    {{ finish_reason('response') }} as finish_reason,
    {{ usage_tokens('response', 'totalTokenCount') }} as total_tokens,
    {{ model_version('response') }} as model_version,
    model_name,
    attempt
from {{ ref('review_requests') }}
