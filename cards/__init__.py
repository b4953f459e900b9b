"""vlfeedback_kit.cards: dataset and model cards rendered from data, and publishing versions to the Hub."""
