"""Face engines: landmarks and tracking, AU-like region signals, micro-expression episodes, FER classes."""
