"""The model layer: loading, one hook lifecycle, batching and last-token capture."""
