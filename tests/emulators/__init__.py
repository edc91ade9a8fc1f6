"""Loopback emulators of BigQuery and the Vertex AI batch API, for tests."""
