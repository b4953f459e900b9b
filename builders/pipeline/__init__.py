"""The AI-feedback pipeline: instructions → model-pool decoding → multi-aspect judging → the release layout."""
