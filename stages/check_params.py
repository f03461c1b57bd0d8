"""check_params: every key of params.yaml validated before any other stage runs -> data/params/checked.txt

Every stage depends on the file this writes. DVC deletes a stage's outputs before it runs the
stage's command, so a bad value must be refused here, upstream of everything: then nothing is
deleted. The file's content never changes, so a valid edit reruns only the stages that read it.
"""
from robust_cifar.outputs import write_text
from robust_cifar.params import load_params
from robust_cifar.stage import run_stage
from robust_cifar.validation import validate_params
from stages import paths


def main(argv: list[str]) -> None:
    validate_params(load_params())
    write_text(paths.PARAMS_CHECKED, "params.yaml is valid\n")


if __name__ == "__main__":
    run_stage(main)
