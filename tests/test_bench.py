"""tools.bench refuses what it cannot measure in one line, before any model is built."""
import pytest

from tools import bench


@pytest.mark.parametrize("arguments, words", [
    (["--batch", "0"], "--batch 0: must be at least 1"),
    (["--batch", "-4"], "--batch -4: must be at least 1"),
    (["--seconds", "0"], "--seconds 0.0: must be above 0"),
    (["--seconds", "inf"], "--seconds inf: must be above 0 and below an hour"),   # it ran with no end
    (["--long", "--seconds", "2"], "give --long or --seconds, not both"),   # 2 was silently 15
    (["--device", "bogus"], "--device bogus: must be auto, cpu, cuda or cuda:N"),
    (["--device", "cuda:99"], "--device cuda:99: this machine has no such device")])
def test_what_cannot_be_measured_is_one_line(capsys, arguments, words):
    with pytest.raises(SystemExit) as exit_info:
        bench.main(arguments)
    assert exit_info.value.code == 2
    errors = capsys.readouterr().err.strip().splitlines()
    assert words in errors[-1] and not any("Traceback" in line for line in errors)


def test_a_batch_that_does_not_fit_in_memory_is_one_line(monkeypatch):
    """`--batch 100000` on a CPU was the allocator's RuntimeError traceback (26 GB asked for)."""
    from robust_cifar.errors import UserError

    def too_large(*args, **kwargs):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory: you tried "
                           "to allocate 26214400000 bytes. Error code 12 (Cannot allocate memory)")

    monkeypatch.setattr(bench, "project_training", too_large)
    with pytest.raises(UserError, match="--batch 100000: a training step of that batch does not fit") as refused:
        bench.main(["--batch", "100000", "--device", "cpu", "--seconds", "0.1"])
    assert "\n" not in str(refused.value)
    monkeypatch.setattr(bench, "project_training", lambda *args, **kwargs: 1 / 0)   # any other failure stays itself
    with pytest.raises(ZeroDivisionError):
        bench.main(["--device", "cpu", "--seconds", "0.1"])
