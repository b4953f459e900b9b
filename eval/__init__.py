"""vlfeedback_kit.eval: benchmark scoring and base-vs-Silkie comparisons."""
