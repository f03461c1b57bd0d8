"""The numerics a result depends on are params, and a machine that cannot honour them refuses them."""

import functools
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from robust_cifar import check_params
from robust_cifar import compute as compute_module
from robust_cifar.compute import Compute, ComputeConfig
from robust_cifar.errors import DeviceError, ParamsError
from robust_cifar.params import SET_WITH_S, Params, with_overrides
from tests.test_params import PARAMS


def config(**changes) -> ComputeConfig:
    settings = dict(device="cpu", fast=False, eval_batch_size=64, deterministic=False, cuda_graphs=False, threads=1)
    return ComputeConfig(**{**settings, **changes})


def test_the_params_thread_count_is_the_one_the_stage_runs_with():
    before = torch.get_num_threads()
    try:
        for threads in (1, 2):
            Compute.from_config(config(threads=threads))
            assert torch.get_num_threads() == threads
    finally:
        torch.set_num_threads(before)


def test_bf16_on_a_cpu_without_bf16_units_is_refused_not_quietly_run_in_fp32(monkeypatch):
    monkeypatch.setattr(compute_module, "bf16_supported", lambda device: False)
    with pytest.raises(DeviceError, match="compute.fast=false"):
        Compute.from_config(config(fast=True))
    assert Compute.from_config(config(fast=False)).mixed_precision is False


def test_bf16_where_the_cpu_has_the_units_is_what_runs(monkeypatch):
    monkeypatch.setattr(compute_module, "bf16_supported", lambda device: True)
    assert Compute.from_config(config(fast=True)).mixed_precision is True


def test_a_gpu_the_machine_lacks_is_refused_with_the_cpu_settings_to_use():
    missing = f"cuda:{torch.cuda.device_count() + 7}"
    with pytest.raises(DeviceError, match=missing):
        config(device=missing).check_machine()
    if not torch.cuda.is_available():
        with pytest.raises(DeviceError, match="compute.device=cpu -S compute.fast=false"):
            config(device="cuda").check_machine()


@pytest.mark.parametrize("name, value", [("ATEN_CPU_CAPABILITY", "default"), ("ONEDNN_MAX_CPU_ISA", "SSE41"),
                                         ("DNNL_MAX_CPU_ISA", "AVX"), ("MKL_CBWR", "COMPATIBLE")])
def test_an_environment_variable_that_picks_other_kernels_is_refused(monkeypatch, name, value):
    """Each changed a tiny training's weights (tools.determinism) while the params stayed the same."""
    monkeypatch.setattr(compute_module, "KERNEL_ENV_ALLOWED", False)   # as in every stage (the tool alone allows them)
    monkeypatch.setenv(name, value)
    with pytest.raises(DeviceError, match=f"{name}={value} is set: .* unset it \\(`unset {name}`\\)") as refused:
        config().check_machine()
    assert "\n" not in str(refused.value)
    monkeypatch.setenv(name, "")   # set but empty: the library's default
    config().check_machine()


def test_emulated_bf16_is_allowed_only_where_the_determinism_tool_turns_onednn_off(monkeypatch):
    monkeypatch.setattr(compute_module, "EMULATED_BF16_ALLOWED", True)
    assert compute_module.bf16_supported(torch.device("cpu"))
    config(fast=True).check_machine()   # passes on any CPU
    monkeypatch.setattr(compute_module, "EMULATED_BF16_ALLOWED", False)
    native = torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()
    assert compute_module.bf16_supported(torch.device("cpu")) == native


def test_more_threads_than_cores_is_allowed_with_a_one_line_warning_naming_the_fix():
    assert config(threads=2).oversubscription(cores=2) is None
    assert config(device="cuda", threads=64).oversubscription(cores=2) is None   # the GPU does the work
    warning = config(threads=1000).oversubscription(cores=2)
    assert "\n" not in warning and "compute.threads = 1000 is more than the 2 CPU cores" in warning
    assert "`-S compute.threads=2`" in warning


def test_check_params_prints_the_oversubscription_warning_and_passes(monkeypatch, capsys):
    raw = yaml.safe_load(PARAMS.read_text())
    raw["compute"].update(device="cpu", fast=False, threads=16)
    monkeypatch.setattr(check_params, "usable_cores", lambda: 4)
    check_params.check_on_this_machine(Params(raw, source="params.yaml"))
    assert "compute.threads = 16 is more than the 4 CPU cores" in capsys.readouterr().err


def test_overrides_are_applied_by_dvc_exp_runs_own_code():
    params = Params(yaml.safe_load(PARAMS.read_text()))
    edited = with_overrides(params, ["knn.k=5", "seeds.train=[0, 1, 2]", "compute.fast=false", "data.archive_md5=",
                                     "preset=quick", "data.archive=''"])
    assert edited.raw["knn"]["k"] == 5 and edited.raw["seeds"]["train"] == [0, 1, 2]
    assert edited.raw["compute"]["fast"] is False
    assert edited.raw["data"]["archive_md5"] == "" and edited.raw["data"]["archive"] == ""   # `key=` is '' to DVC
    assert params.raw["knn"]["k"] != 5   # the original is untouched
    for bad in ("knn.k", "=3", "knn.k.deeper=1", "knn.k=[1"):
        with pytest.raises(ParamsError, match="override"):
            with_overrides(params, [bad])


@pytest.mark.parametrize("sweep", ["knn.k=1,2", "knn.k=choice(1,2)", "knn.k=range(1,4)", "umap.min_dist=interval(0,1)",
                                   "knn.k=glob(*)"])
def test_a_sweep_of_hydras_grammar_is_one_line_that_names_the_sweep_tool(sweep):
    """range, interval and glob reached DVC's params writer as objects it cannot write: a traceback from every tool
    that checks overrides (sweep --dry-run, concurrent_repro -S, the determinism check)."""
    params = Params(yaml.safe_load(PARAMS.read_text()))
    with pytest.raises(ParamsError) as refused:
        with_overrides(params, ["seeds.plan=1", sweep])
    key = sweep.partition("=")[0]
    assert str(refused.value) == (f"override {sweep} is a sweep of several values, where a run takes one value per "
                                  f"key: `python -m tools.sweep -S {key}=a,b,c` runs one experiment per value")


def test_a_refused_override_among_many_is_named_alone_with_how_to_quote_it():
    """The preset's 30 overrides were all printed, and the advice did not say what DVC's grammar wanted."""
    params = Params(yaml.safe_load(PARAMS.read_text()))
    with pytest.raises(ParamsError) as refused:
        with_overrides(params, ["knn.k=5", "data.archive=données.tar.gz", "seeds.plan=1"])
    message = str(refused.value)
    assert message.startswith("override data.archive=données.tar.gz: ") and "knn.k=5" not in message
    assert message.endswith("in quotes: key='a text')")
    assert with_overrides(params, ["data.archive='données.tar.gz'"]).raw["data"]["archive"] == "données.tar.gz"


@pytest.mark.parametrize("settings, key, hint", [
    (["knn.k=0"], "knn.k", "change the `-S knn.k=...` you gave"),
    (["model={width: 0, embedding_dim: 128, dropout: 0.1}"], "model.width", "change the `-S model=...` you gave"),
    # a bad value the file holds, with another key overridden: the file is what to fix
    (["seeds.plan=1"], "knn.k", "edit it in params.yaml or override it with `dvc exp run -S knn.k=... dvc.yaml`")])
def test_a_bad_value_names_where_it_came_from_a_tools_flag_or_the_file(settings, key, hint):
    raw = yaml.safe_load(PARAMS.read_text())
    if settings == ["seeds.plan=1"]:
        raw["knn"]["k"] = 0
    edited = with_overrides(Params(raw), settings)
    with pytest.raises(ParamsError, match=f"`{key}` = 0 is invalid") as refused:
        check_params.validate_params(edited)
    assert str(refused.value).endswith(hint)
    # under a tool that takes -S flags (sweep, concurrent_repro, determinism, ablate), another key is one more flag
    tools = with_overrides(Params(raw), settings, set_with=SET_WITH_S)
    with pytest.raises(ParamsError, match=f"`{key}` = 0 is invalid") as refused:
        check_params.validate_params(tools)
    assert str(refused.value).endswith(hint if hint.startswith("change the") else
                                       f"add `-S {key}=...` to the command (or edit it in params.yaml)")



# torch's own OpenMP runtime, loaded as `import torch` loads it (in milliseconds, where importing torch takes seconds)
LOAD_OPENMP = ("import ctypes, importlib.util, pathlib; ctypes.CDLL(str(pathlib.Path(importlib.util.find_spec('torch')"
               ".submodule_search_locations[0]) / 'lib' / 'libgomp.so.1'))")


@functools.cache
def openmp_spin_count(code: str, wait_policy: str | None) -> str:
    """How long libgomp's threads spin before they sleep, as it says when it loads, in a process running `code`."""
    env = {key: value for key, value in os.environ.items() if key != "OMP_WAIT_POLICY"}
    env.update({"OMP_DISPLAY_ENV": "VERBOSE", **({"OMP_WAIT_POLICY": wait_policy} if wait_policy else {})})
    shown = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).parents[1], env=env, capture_output=True,
                           text=True, check=True).stderr
    (line,) = [line for line in shown.splitlines() if "GOMP_SPINCOUNT" in line]
    return line.split("=")[1].strip(" '")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="libgomp is torch's OpenMP on Linux")
@pytest.mark.parametrize("package", ["stages", "tools"])
@pytest.mark.parametrize("wait_policy", [None, "ACTIVE"], ids=["default", "the user's"])
def test_a_stage_or_tools_openmp_threads_wait_asleep_unless_the_environment_says_otherwise(package, wait_policy):
    """Spinning waits (libgomp's default) of processes side by side took the cores from the threads they waited for:
    two 2-thread trainings on 2 cores ran at half the speed."""
    started = openmp_spin_count(f"import sys; sys.argv = ['-m']; import {package}; {LOAD_OPENMP}", wait_policy)
    alone = openmp_spin_count(LOAD_OPENMP, wait_policy)
    assert started == ("0" if wait_policy is None else alone)
    assert alone != "0"   # torch's OpenMP alone, by default, spins
