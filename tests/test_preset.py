import copy

import pytest
import yaml

from robust_cifar.params import Params
from robust_cifar.preset import PRESETS, command, main, overrides
from robust_cifar.validation import validate_params
from tests.test_params import PARAMS


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_sets_known_keys_to_valid_values(name):
    raw = yaml.safe_load(PARAMS.read_text())
    edited = copy.deepcopy(raw)
    for argument in overrides(name)[1::2]:
        key, text = argument.split("=", 1)
        node = edited
        *parents, last = key.split(".")
        for part in parents:
            node = node[part]
        assert last in node, f"{key} is not a params.yaml key"
        node[last] = yaml.safe_load(text)
    validate_params(Params(edited))   # the check_params stage would accept the experiment
    assert edited["preset"] == name
    assert len(edited["seeds"]["train"]) >= 2   # so the spread shows


def test_the_command_is_one_dvc_experiment_with_the_archive(capsys):
    cmd = command("quick", "../shared/data/cifar10-jpeg.tar.gz", "26db66ca8cac19aed87bc28f0e6c6d82", "quick-cpu")
    assert cmd[1:6] == ["-m", "dvc", "exp", "run", "-n"] and cmd[6] == "quick-cpu"
    assert "data.archive=../shared/data/cifar10-jpeg.tar.gz" in cmd and "seeds.train=[0, 1]" in cmd
    assert main(["quick", "--dry-run", "--name", "x"]) == 0
    assert "dvc exp run -n x -S preset=quick" in capsys.readouterr().out
