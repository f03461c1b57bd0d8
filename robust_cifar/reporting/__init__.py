"""Reporting: seeds aggregated (aggregate), the answer (summarize), UMAP maps (umap_plot), training curves
(curves), perturbed examples (examples), and what every figure shares."""
