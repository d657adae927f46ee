"""Training loops (SFT, Edit-GRPO) and the small pure functions they are built from."""
