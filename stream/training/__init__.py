"""Training and evaluation commands (`microemo train`, `train-heads`, `eval`); the runtime never imports it."""
