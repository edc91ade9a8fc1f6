-- Clean reviews joined to the product catalog; empty and very short reviews are dropped.
select
    r.review_id,
    r.product_id,
    p.product_name,
    p.category,
    cast(r.rating as int64) as rating,
    trim(r.body) as body,
    cast(r.created_at as timestamp) as created_at
from {{ source('shop', 'reviews') }} as r
join {{ ref('products') }} as p using (product_id)
where length(trim(r.body)) >= {{ var('min_review_chars') }}
