"""GenEval-style prompt metadata: schema, prompt-set generation and UniRL's question/answer."""
