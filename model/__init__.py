"""The engines: media and text → numbers (no asyncio, no network); training and evaluation in model/training."""
