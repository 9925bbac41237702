"""A faithful GenEval: pure rules, pluggable detectors and colour classifiers, a resumable runner."""
