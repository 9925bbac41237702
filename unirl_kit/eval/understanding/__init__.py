"""`unirl eval understanding`: question-answering metrics (clean renders, UniRL's protocol, POPE, VQA)."""
