"""builders: the VLFeedback dataset — schema, ingest, sample, pairing, the AI-feedback pipeline, the Hub-ready writer."""
