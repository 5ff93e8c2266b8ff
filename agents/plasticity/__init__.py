"""Plasticity strategies: one module per family, each registering itself on import."""
