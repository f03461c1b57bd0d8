"""Perturbations in pixel space (colour jitter, sparse noise, FGM) and the fixed plans of the perturb stage."""
