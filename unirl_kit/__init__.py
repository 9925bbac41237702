"""unirl-kit: self-improvement of unified multimodal models (UniRL), with a faithful GenEval."""

__version__ = "0.1.0"
