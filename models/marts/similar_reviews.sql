-- The three reviews nearest to each review by cosine similarity of their embeddings (vectors of the
-- same model and dimension; rows whose embedding failed are left out). COSINE_DISTANCE is BigQuery's;
-- on DuckDB it runs as list_cosine_distance, with the same ranking.
with embedded as (
    select review_id, product_id, {{ embedding_values('predictions') }} as embedding
    from {{ ref('review_embeddings') }}
    where {{ row_outcome('predictions', 'status') }} in ('ok', 'truncated')
),

pairs as (
    select
        a.review_id,
        b.review_id as similar_review_id,
        b.product_id as similar_product_id,
        1 - COSINE_DISTANCE(a.embedding, b.embedding) as similarity
    from embedded as a
    join embedded as b on a.review_id != b.review_id
)

select
    review_id,
    rank,
    similar_review_id,
    similar_product_id,
    round(similarity, 6) as similarity
from (
    select *, row_number() over (partition by review_id order by similarity desc, similar_review_id) as rank
    from pairs
)
where rank <= 3
