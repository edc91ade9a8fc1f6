{{ config(materialized='batch', model='gemini-2.5-flash', key='review_id') }}
-- One Gemini request per review, in JSON mode: sentiment, topics and a one-line summary.
select
    review_id,
    product_id,
    created_at,
    {{ gemini_request(
        prompt=review_prompt('product_name', 'body'),
        system_instruction='You label product reviews. Answer with JSON only.',
        generation_config={'temperature': 0.0, 'maxOutputTokens': 256},
        response_schema={
            'type': 'OBJECT',
            'properties': {
                'sentiment': {'type': 'STRING', 'enum': ['positive', 'negative', 'mixed']},
                'topics': {'type': 'ARRAY', 'items': {'type': 'STRING', 'enum': ['quality', 'shipping', 'price', 'support', 'size', 'durability']}},
                'summary': {'type': 'STRING'}
            },
            'required': ['sentiment', 'topics', 'summary']
        }
    ) }} as request
from {{ ref('stg_reviews') }}
