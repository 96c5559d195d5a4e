"""Training: optimizer setups, presets, the resolved plan, the step, the loop, layouts and
checkpoints."""
