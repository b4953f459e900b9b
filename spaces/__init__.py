"""spaces: the Gradio Space comparing Silkie with its base."""
