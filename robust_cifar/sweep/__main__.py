import sys

from robust_cifar.sweep.cli import main

sys.exit(main())
