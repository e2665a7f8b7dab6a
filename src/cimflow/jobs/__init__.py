"""End-to-end jobs the CLI runs (orchestration above the api layer)."""
