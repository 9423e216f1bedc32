"""Reproductions of the papers' figures and the demo; one module per figure group (ARCHITECTURE.md)."""
