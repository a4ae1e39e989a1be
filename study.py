#!/usr/bin/env python3
"""Compare sequence-model architectures by how much of their history they use.

    python study.py --arch transformer lstm cnn
    python study.py --help
"""
import sys

from mnemoscope.cli import main

if __name__ == "__main__":
    sys.exit(main())
