"""Node functions (prepare, propose, join, critique, aggregate) and the prompts they use."""
