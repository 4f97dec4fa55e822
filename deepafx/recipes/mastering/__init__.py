"""Automatic mastering recipe: an encoder drives a multiband compressor → graphic EQ → limiter chain (DeepAFx)."""
