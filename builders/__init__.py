"""vlfeedback_kit.builders: the VLFeedback dataset — schema, ingest, sample, pairing, feedback
pipeline, Hub-ready writer."""
