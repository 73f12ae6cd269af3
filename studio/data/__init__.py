"""Embedded data: the shapes world (procedural), digits (scikit-learn), text embeddings."""
