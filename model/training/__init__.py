"""Training and evaluation of the emotion model: corpora, heads, projector, scores, vocabulary; never runtime."""
