"""The networks: the reference GPT and the published decoder shapes, with their table labels."""
