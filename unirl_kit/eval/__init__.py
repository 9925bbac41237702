"""Evaluation: GenEval (`eval.geneval`) and, later, understanding metrics."""
