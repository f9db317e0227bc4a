"""The user's entry: `distill` CLI, YAML job specs and reports."""
