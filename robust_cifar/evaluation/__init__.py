"""Evaluation: embeddings under every condition (embed), head and 3-NN accuracy (evaluate), attacks and
robust accuracy (robustness)."""
