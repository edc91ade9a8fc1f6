{{ config(materialized='batch', model='text-embedding-005', key='review_id') }}
-- One embedding per review (a Vertex text-embedding batch job, BigQuery in and out): the review text
-- as a retrieval document titled with the product name, cut to 256 dimensions.
select
    review_id,
    product_id,
    {{ embedding_request(
        content='body',
        task_type='RETRIEVAL_DOCUMENT',
        title='product_name',
        output_dimensionality=256
    ) }} as request
from {{ ref('stg_reviews') }}
