"""`unirl loop`: rounds of generate -> score -> train -> evaluate, and the report."""
