"""tools/determinism.py: trainings traced tensor by tensor, and the first difference named."""
import os
import subprocess
import sys

import pytest
import torch

from robust_cifar import compute as compute_module
from robust_cifar.errors import UserError
from robust_cifar.training.methods.registry import REFERENCE_METHOD
from tests.methods import ANGULAR
from tests.pipeline_project import dvc_env
from tools import determinism as determinism_tool
from tools.determinism import (DIFFERENT_EXIT, Run, Tracer, check_project, compare, describe, dispatch,
                               first_difference, next_split, onednn_kernels)


def noise(shape) -> torch.Tensor:
    """Different on every call, whatever was seeded: a stand-in for a racing kernel."""
    return 1e-6 * torch.rand(shape, generator=torch.Generator().manual_seed(int.from_bytes(os.urandom(8), "little") >> 1))


class NoisyForward(torch.nn.Module):
    def forward(self, x):
        return x + noise(x.shape)


class NoisyGradient(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, gradient):
        return gradient + noise(gradient.shape)


class NoisyBackward(torch.nn.Module):
    def forward(self, x):
        return NoisyGradient.apply(x)


def traced_training(middle: type[torch.nn.Module] = torch.nn.Identity, steps: int = 3) -> list:
    """A few SGD steps of Linear -> middle -> Linear, seeded, traced from before the model is built."""
    with Tracer() as tracer:
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(6, 5), middle(), torch.nn.Linear(5, 3))
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        inputs, labels = torch.randn(8, 6), torch.randint(0, 3, (8,))
        for _ in range(steps):
            loss = torch.nn.functional.cross_entropy(model(inputs), labels)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return tracer.records


def test_a_seeded_training_traces_the_same_tensors_twice():
    first, second = traced_training(), traced_training()
    assert first == second
    kinds = {(what, name) for _, what, name, _ in first}
    assert ("input", "Sequential") in kinds            # the batch, given from outside the modules
    assert ("output", "Sequential.2") in kinds
    assert ("gradient", "Sequential.0") in kinds       # what reaches the first layer's output
    assert ("parameter gradient", "Sequential.0.weight") in kinds
    assert ("learning rate", "group 0") in kinds
    assert {steps for steps, *_ in first} == {0, 1, 2}
    # the traced weights change from step to step, so the same tensor has other bytes in later steps
    assert len({digest for steps, what, name, digest in first if (what, name) == ("output", "Sequential.2")}) == 3


def test_a_forward_pass_without_gradients_is_not_traced():
    with Tracer() as tracer:
        model = torch.nn.Sequential(torch.nn.Linear(2, 2))
        with torch.no_grad():
            model(torch.ones(1, 2))      # validation or inference: the weights never see it
        model(torch.ones(1, 2))
    assert [what for _, what, _, _ in tracer.records] == ["input", "output", "output"]   # the Linear, the Sequential


def test_the_hooks_are_gone_after_the_trace():
    traced_training()
    with Tracer() as tracer:
        pass
    torch.nn.Linear(2, 2)(torch.ones(1, 2))
    assert tracer.records == []


def test_a_nondeterministic_forward_is_named_by_its_output():
    first, second = traced_training(NoisyForward), traced_training(NoisyForward)
    index = first_difference(first, second)
    assert index is not None
    assert describe(second[index]) == "the output of Sequential.1 before optimizer step 1"
    assert describe(first[index - 1]) == "the output of Sequential.0 before optimizer step 1"


def test_a_nondeterministic_backward_is_named_by_the_gradient_it_passes_on():
    first, second = traced_training(NoisyBackward), traced_training(NoisyBackward)
    index = first_difference(first, second)
    # the forward is exact; the gradient reaching Sequential.0's output is the noisy backward's result
    assert {record[1] for record in first[:index]} >= {"output", "gradient"}
    assert describe(second[index]) == "the gradient reaching the output of Sequential.0 before optimizer step 1"


def test_first_difference_of_equal_longer_and_shorter_traces():
    trace = [(0, "output", "a", "1"), (0, "output", "b", "2")]
    assert first_difference(trace, list(trace)) is None
    assert first_difference(trace, [trace[0], (0, "output", "b", "3")]) == 1
    assert first_difference(trace, trace[:1]) == 1
    assert first_difference(trace[:1], trace) == 1


def test_compare_says_which_runs_differ_and_where():
    records = [(0, "output", "Model.a", "1"), (1, "parameter gradient", "Model.a.weight", "2")]
    same = Run(records, "w", 1.0)
    other_weights = Run(records, "v", 1.0)
    other_gradient = Run([records[0], (1, "parameter gradient", "Model.a.weight", "3")], "v", 1.0)
    shorter = Run(records[:1], "v", 1.0)
    assert compare([same, Run(records, "w", 2.0)]) == []
    lines = compare([same, other_weights, other_gradient, shorter])
    assert lines[0].startswith("run 2: every traced tensor as in run 1, but other saved weights")
    assert lines[2] == ("run 3: first differs at the gradient of Model.a.weight before optimizer step 2, after 1 "
                        "identical tensors (the last: the output of Model.a before optimizer step 1)")
    assert lines[4].startswith("run 4: its trace has 1 tensors, run 1's 2")
    assert lines[1] == lines[3] == lines[5] == f"  {dispatch([], [])}"   # each differing run: oneDNN's dispatch


def test_runs_that_differ_are_followed_by_the_commands_that_split_onednn_from_the_rest():
    said = next_split([ANGULAR, "--runs", "12", "-S", "compute.fast=true", "-S", "methods=[a, b]"])
    again = f"python -m tools.determinism {ANGULAR} --runs 12 -S compute.fast=true -S 'methods=[a, b]'"
    assert f"`{again} --without-onednn`" in said and f"`ONEDNN_MAX_CPU_ISA=AVX512_CORE_BF16 {again}`" in said


@pytest.mark.parametrize("without_onednn", [False, True])
def test_the_tool_names_the_next_split_only_where_onednn_ran(monkeypatch, capsys, without_onednn):
    records = [(0, "output", "Model.a", "1")]
    kernels = [] if without_onednn else ["convolution,jit:avx2,forward_training,x"]
    results = iter([Run(records, "w", 1.0, kernels), Run([(0, "output", "Model.a", "2")], "v", 1.0, kernels)])
    # what main switches for its trainings, put back after the test
    monkeypatch.setattr(torch.backends.mkldnn, "enabled", torch.backends.mkldnn.enabled)
    for switch in ("KERNEL_ENV_ALLOWED", "EMULATED_BF16_ALLOWED"):
        monkeypatch.setattr(compute_module, switch, getattr(compute_module, switch))
    monkeypatch.setattr(determinism_tool, "check_project", lambda settings, method, seed: {})
    monkeypatch.setattr(determinism_tool, "run_in_scratch", lambda *args: next(results))
    argv = [ANGULAR, "--runs", "2"] + (["--without-onednn"] if without_onednn else [])
    assert determinism_tool.main(argv) == DIFFERENT_EXIT
    said = capsys.readouterr().out
    assert "2 different results in 2 runs" in said
    assert ("next: `python -m tools.determinism" in said) != without_onednn, said
    assert compute_module.EMULATED_BF16_ALLOWED == without_onednn   # (undone by monkeypatch)


def test_a_split_changed_during_the_check_is_named_not_blamed_on_a_kernel(tmp_path, monkeypatch):
    """A `dvc checkout` of another split between runs once read as two results, `inside a kernel`."""
    split = tmp_path / "data" / "split" / "indices.npz"
    split.parent.mkdir(parents=True)
    split.write_bytes(b"first split")
    (tmp_path / "data" / "raw").mkdir()
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(torch.backends.mkldnn, "enabled", torch.backends.mkldnn.enabled)
    monkeypatch.setattr(compute_module, "KERNEL_ENV_ALLOWED", compute_module.KERNEL_ENV_ALLOWED)
    monkeypatch.setattr(determinism_tool, "check_project", lambda settings, method, seed: {})

    def run_and_swap(*args):
        split.write_bytes(b"another split, copied in")
        return Run([(0, "output", "Model.a", "1")], "w", 1.0)

    monkeypatch.setattr(determinism_tool, "run_in_scratch", run_and_swap)
    with pytest.raises(UserError, match=r"data/split/indices.npz changed during run 1 .*run the check again"):
        determinism_tool.main([ANGULAR, "--runs", "3"])


VERBOSE = """onednn_verbose,v1,info,oneDNN v3.12.0 (commit 80afa71049cd69a3df32adcccb623b12cd7baa22)
onednn_verbose,v1,info,cpu,runtime:OpenMP,nthr:2
onednn_verbose,v1,info,cpu,isa:Intel AVX-512 with Intel AMX
epoch 1: loss 2.3
onednn_verbose,v1,primitive,exec,cpu,convolution,brg_conv_fwd:avx512_core_amx_bf16,forward_training,src:bf16::blocked:acdb::f0 wei:bf16:a:blocked:AcdB16b32a2b::f0 dst:bf16::blocked:acdb::f0,attr-scratchpad:user,alg:convolution_direct,mb260_ic3oc64_ih32oh32kh3sh1dh0ph1_iw32ow32kw3sw1dw0pw1,0.75
onednn_verbose,v1,primitive,exec,cpu,reorder,jit:uni,undef,src:f32::blocked:a::f0 dst:f32::blocked:a::f0,attr-scratchpad:user,,64,0.001
"""


def test_onednn_kernels_are_read_from_its_verbose_lines_without_their_times():
    kernels, isa = onednn_kernels(VERBOSE.splitlines(keepends=True))
    assert isa == "Intel AVX-512 with Intel AMX"
    assert kernels == ["convolution,brg_conv_fwd:avx512_core_amx_bf16,forward_training,src:bf16::blocked:acdb::f0 "
                       "wei:bf16:a:blocked:AcdB16b32a2b::f0 dst:bf16::blocked:acdb::f0,attr-scratchpad:user,"
                       "alg:convolution_direct,mb260_ic3oc64_ih32oh32kh3sh1dh0ph1_iw32ow32kw3sw1dw0pw1",
                       "reorder,jit:uni,undef,src:f32::blocked:a::f0 dst:f32::blocked:a::f0,attr-scratchpad:user,,64"]
    again, _ = onednn_kernels(VERBOSE.replace("0.75", "0.81").splitlines())   # another time, the same kernel
    assert again == kernels
    # ONEDNN_VERBOSE_TIMESTAMP=1 puts a time before the version: the same kernels are read
    stamped = VERBOSE.replace("onednn_verbose,v1,", "onednn_verbose,1733500000000.123,v1,")
    assert onednn_kernels(stamped.splitlines()) == (kernels, isa)


def test_dispatch_says_whether_onednn_chose_the_same_kernels():
    kernels = ["convolution,brg_conv_bwd_w:avx512_core_amx,backward_weights,x", "reorder,jit:uni,undef,y"]
    assert dispatch(kernels, list(kernels)) == ("oneDNN ran the same 2 kernels in the same order in both: the difference "
                                                "lies inside a kernel, or outside oneDNN")
    other = [kernels[0], "reorder,simple:any,undef,y"]
    assert dispatch(kernels, other) == f"oneDNN chose another kernel at call 2: run 1 ran `{kernels[1]}`, this run `{other[1]}`"
    assert dispatch(kernels, kernels[:1]) == "oneDNN ran 1 kernels, run 1 2, the first 1 the same"


def determinism(project, *args, env: dict[str, str] | None = None):
    return subprocess.run([sys.executable, "-m", "tools.determinism", *args], cwd=project, env={**dvc_env(), **(env or {})},
                          capture_output=True, text=True)


def ended_process_id() -> int:
    ended = subprocess.Popen([sys.executable, "-c", "pass"])
    ended.wait()
    return ended.pid


def test_the_scratch_folders_of_checks_that_no_longer_run_are_found_and_no_others(tmp_path):
    ended = ended_process_id()
    abandoned = tmp_path / f"determinism-{ended}-x1y2"
    running = tmp_path / f"determinism-{os.getpid()}-a3b4"
    for folder in (abandoned, running, tmp_path / "determinism-report-c5d6"):   # the last: no check's pid
        folder.mkdir()
    (tmp_path / f"determinism-{ended}-file").write_text("")   # a file of that name is no scratch folder
    assert determinism_tool.abandoned_scratch(tmp_path) == [abandoned]


def test_the_tool_on_the_tiny_project_finds_one_result_and_writes_nothing(reproduced_project, tmp_path):
    def state():
        listing = subprocess.run(["git", "status", "--porcelain", "--ignored"], cwd=reproduced_project,
                                 capture_output=True, text=True, check=True).stdout
        return listing, sorted((str(p), p.stat().st_mtime_ns) for p in (reproduced_project / "models").iterdir())

    before = state()
    abandoned = tmp_path / f"determinism-{ended_process_id()}-x1y2"   # left by a check killed with SIGKILL
    (abandoned / "stdout.log").parent.mkdir()
    (abandoned / "stdout.log").write_text("verbose lines")
    # the seed after the options, as a user may write it; an instruction set that stages refuse is the tool's to try
    result = determinism(reproduced_project, ANGULAR, "--runs", "2", "-S", "compute.threads=2", "-S", "train.epochs=1",
                         "0", env={"ONEDNN_MAX_CPU_ISA": "AVX2", "TMPDIR": str(tmp_path)})
    assert result.returncode == 0, result.stdout + result.stderr
    assert list(tmp_path.glob("determinism-*")) == []   # the abandoned folder removed, and its own two too
    assert f"train@{ANGULAR}-0: one result in 2 runs: bit-identical on this machine" in result.stdout
    assert result.stdout.count("tensors traced") == 2 and result.stdout.count("(Intel AVX2)") == 2, result.stdout
    # oneDNN's dispatch is read from each run (the tiny model's convolutions run through oneDNN on a CPU)
    assert all(int(line.split(" oneDNN kernels run")[0].rsplit(", ", 1)[1].replace(",", "")) > 0
               for line in result.stdout.splitlines() if "tensors traced" in line), result.stdout
    assert state() == before

    refused = determinism(reproduced_project, "nonsense")
    assert refused.returncode == 2 and refused.returncode != DIFFERENT_EXIT
    assert len(refused.stderr.strip().splitlines()) == 1 and "nonsense" in refused.stderr, refused.stderr
    assert refused.stdout == ""   # refused before any training started
    assert state() == before


def test_without_onednn_the_runs_use_pytorchs_own_kernels_and_bf16_runs_on_any_cpu(reproduced_project):
    """The filer's split of a difference: runs that differ with oneDNN and agree without it point at its kernels."""
    result = determinism(reproduced_project, ANGULAR, "--runs", "2", "--without-onednn", "-S", "compute.threads=2",
                         "-S", "train.epochs=1", "-S", "compute.fast=true")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "oneDNN off" in result.stdout.splitlines()[0]
    assert result.stdout.count(" 0 oneDNN kernels run,") == 2, result.stdout   # oneDNN dispatched nothing
    assert f"train@{ANGULAR}-0: one result in 2 runs" in result.stdout


@pytest.mark.parametrize("settings, seed, named", [
    (["knn.kk=3"], 0, "knn.kk"),
    (["train.lr=1e9"], 0, "train.lr"),   # read by the training only: checked before the first run all the same
    (["methods=[]"], 0, "methods"),   # what only the check_params stage refuses
    # a GPU machine hears of the graphs; one without a GPU of that first (it once heard of the graphs)
    (["compute.device=cuda", "compute.cuda_graphs=true"], 0,
     "cuda_graphs=false" if torch.cuda.is_available() else "this machine has no CUDA GPU"),
    ([f"methods=[{REFERENCE_METHOD}]"], 0, f"lacks '{ANGULAR}'"),   # no stage of the project: it once ran all the same
    ([], 2 ** 70, r"seeds\.train")])
def test_what_a_training_would_refuse_is_refused_before_the_first(reproduced_project, monkeypatch, settings, seed,
                                                                   named):
    monkeypatch.chdir(reproduced_project)
    with pytest.raises(UserError, match=named):
        check_project(settings, ANGULAR, seed)
