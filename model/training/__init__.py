"""Training the emotion model: manifests of labelled corpora, and the heads learned on their features."""
