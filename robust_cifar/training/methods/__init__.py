"""Training methods: a module per method in this folder (its file named after it), the pieces they share,
and the one fact about them that every stage of a run needs: which method is the reference.

`build.build_method` imports only the module of the method a stage names, so the stages of one method's
runs depend on its file (and the pieces every method shares), not on the other methods' files: adding a
method reruns none of theirs. `registry` imports them all, for what looks at every method (check_params,
the summary, the figures, the tools). docs/extending.md: adding a method.
"""

# The reference: every other method is compared with it (the verdict), and its model of the same seed
# attacks every model's inputs alike (the transfer condition). The registry checks that it is a method.
REFERENCE_METHOD = "baseline"
FOLDER = "robust_cifar/training/methods"   # where the method modules are, as messages, docs and dvc.yaml name it
