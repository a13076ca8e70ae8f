"""Depth diagnostics (``kind: analyze`` recipes, ``harness analyze``): KL, cross-entropy and
gradient norm by response position, refusal probability by prefill depth."""
