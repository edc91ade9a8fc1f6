-- Reviews per day and sentiment, with the share of requests that did not produce a label.
select
    date(created_at) as review_date,
    count(*) as reviews,
    countif(sentiment = 'positive') as positive,
    countif(sentiment = 'negative') as negative,
    countif(sentiment = 'mixed') as mixed,
    countif(outcome != 'ok') as unlabeled,
    sum(total_tokens) as total_tokens
from {{ ref('review_labels') }}
group by review_date
