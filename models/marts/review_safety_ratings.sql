-- Safety ratings of every answer, one row per (review, harm category).
select
    review_id,
    rating.category,
    rating.probability,
    rating.probability_score,
    rating.severity,
    rating.blocked
from {{ ref('review_requests') }},
    unnest({{ safety_ratings('response') }}) as rating
