"""`unirl generate`: sample images from a backbone into GenEval's layout, with tokens and log-probs."""
