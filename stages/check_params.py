"""check_params: every key of params.yaml validated before any other stage runs -> data/params/checked.txt

Every stage depends on the file this writes. DVC deletes a stage's outputs before it runs the
stage's command, so a bad value must be refused here, upstream of everything: then nothing is
deleted. That includes what only this machine can say is wrong: a device it does not have, bf16
without bf16 units, a local archive that is missing or not the one its md5 names. The file's
content never changes, so a valid edit reruns only the stages that read it.

It refuses a dvc.yaml whose stages do not list the modules they import (robust_cifar/code_deps.py): it
depends on the code of every stage, so an edit that adds an import reaches it before any stage reruns.
It also removes the outputs of methods and seeds that params.yaml no longer lists, which DVC leaves in
place (robust_cifar/check_params.py, stale_outputs), and warns where dvc.yaml's plots were written for other
methods (`python -m tools.sync_dvc_yaml`). Its output persists (`persist: true` in dvc.yaml) so
that DVC's run cache never skips it: every edit of params.yaml runs it.
"""
from robust_cifar.check_params import (CHECKED, check_code_deps, check_on_this_machine, remove_stale_outputs,
                                      warn_plots_of_other_methods)
from robust_cifar.outputs import write_text
from robust_cifar.params import load_params
from robust_cifar.stage import run_stage
from stages import paths


def main(argv: list[str]) -> None:
    paths.no_arguments(argv)
    params = load_params()
    check_on_this_machine(params)
    check_code_deps()
    remove_stale_outputs(params)
    warn_plots_of_other_methods(params)
    write_text(paths.PARAMS_CHECKED, CHECKED)


if __name__ == "__main__":
    run_stage(main, persist=True)
