"""Batch backends: where a batch model's requests are answered (local executor or Vertex AI)."""
