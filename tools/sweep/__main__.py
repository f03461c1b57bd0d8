from robust_cifar.signals import run_tool
from tools.sweep.cli import main

run_tool(main)
