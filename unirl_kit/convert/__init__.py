"""Weight converters: other frameworks' checkpoints into the formats this project loads."""
