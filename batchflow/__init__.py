"""batchflow: dbt-style projects for Gemini batch prediction, BigQuery in and BigQuery out."""

__version__ = "0.1.0"
