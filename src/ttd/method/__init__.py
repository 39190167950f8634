"""The paper's method: candidate tags and scorers, selection, the composite mask and losses, the objective."""
