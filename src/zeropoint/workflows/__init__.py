"""Model-level workflows: dynamic, static (prepare → calibrate → convert) and QAT."""
