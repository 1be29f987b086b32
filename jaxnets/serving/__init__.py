"""Serving with BentoML: packaging a checkpoint into the model store, and the HTTP service."""
