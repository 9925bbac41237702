"""Closed worlds the toolkit can run in offline: vocabularies, renderers, exact detectors."""
