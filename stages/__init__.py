"""The pipeline's stages, one module each, run by dvc.yaml as `python -m stages.<name>`."""
import sys

if sys.argv[:1] == ["-m"]:   # Python sets this while it finds `-m stages.<name>`; not when a test or tool imports one
    from robust_cifar.signals import guard_start
    guard_start()
    from robust_cifar.machine import threads_wait_asleep
    threads_wait_asleep()   # before the stage imports torch
