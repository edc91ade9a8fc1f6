-- One row per (review, topic) the model named.
select
    review_id,
    topic
from {{ ref('review_requests') }},
    unnest({{ json_string_array('response', '$.topics') }}) as topic
