"""What timm-hvt's start-up hook (timm_hvt_autoload.pth) costs every Python interpreter in its environment.

Runs `python -X importtime -c pass` repeatedly and reports the median cumulative import time of
`_timm_hvt_autoload` as Python itself measures it, and the interpreter start-up wall time with the hook on and off
(TIMM_HVT_AUTOLOAD=0), interleaved so both see the same machine load.

    python benchmarks/startup_cost.py [--repeats 30]
"""
import argparse
import os
import statistics
import subprocess
import sys
import time


def hook_import_us(env) -> int:
    err = subprocess.run([sys.executable, '-X', 'importtime', '-c', 'pass'], env=env,
                         capture_output=True, text=True, check=True).stderr
    for line in err.splitlines():
        if line.rstrip().endswith('_timm_hvt_autoload'):
            return int(line.split('|')[1])
    raise SystemExit('the start-up hook did not run: is timm-hvt installed in this environment?')


def startup_ms(env) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, '-c', 'pass'], env=env, check=True)
    return (time.perf_counter() - start) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--repeats', type=int, default=30)
    args = parser.parse_args()
    on = {k: v for k, v in os.environ.items() if k != 'TIMM_HVT_AUTOLOAD'}
    off = dict(on, TIMM_HVT_AUTOLOAD='0')
    hook, with_hook, without_hook = [], [], []
    for _ in range(args.repeats):
        hook.append(hook_import_us(on))
        with_hook.append(startup_ms(on))
        without_hook.append(startup_ms(off))
    print(f'_timm_hvt_autoload import (python -X importtime, cumulative): median {statistics.median(hook)} us, '
          f'min {min(hook)} us over {args.repeats} runs')
    print(f'interpreter start-up: median {statistics.median(with_hook):.1f} ms with the hook, '
          f'{statistics.median(without_hook):.1f} ms with TIMM_HVT_AUTOLOAD=0')


if __name__ == '__main__':
    main()
