"""The benchmarks of timm-hvt, and what they share with the tests: the authors' computation (`authors_hvt`) and
scikit-learn's digits as an ImageFolder (`digits`). Run from the repository root: `python -m benchmarks.NAME`."""
import os
import platform
import sys

STEADY_MALLOC = ('glibc.malloc.mmap_threshold=33554432:glibc.malloc.trim_threshold=4294967296:'
                 'glibc.malloc.top_pad=268435456')


def restart_with_steady_malloc() -> None:
    """Run this script again with fixed glibc malloc thresholds, which act only from start-up: torch's activations
    then page-fault far less, and steadily. Nothing happens off glibc or once any malloc tunable is set."""
    tunables = os.environ.get('GLIBC_TUNABLES', '')
    if platform.libc_ver()[0] == 'glibc' and 'glibc.malloc.' not in tunables:
        os.execve(sys.executable, sys.orig_argv, {**os.environ, 'GLIBC_TUNABLES': ':'.join(filter(None, [
            tunables, STEADY_MALLOC]))})
