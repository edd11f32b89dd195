"""What the NCHW maps of `forward_intermediates` cost over its NLC tokens: hvt_s_4, every block, eval, one thread.

    python -m benchmarks.bench_intermediates            # writes benchmarks/results/intermediates.csv (~1 min)

Interleaved rounds: each round times both formats (the first alternating) `--reps` times in CPU time of this process
(other load on a shared machine takes wall time, little CPU time) and keeps each one's best. The ratio NCHW / NLC is
the median of the rounds' ratios, given with the lowest and highest round and the ratio of the bests. As
bench_hvt.py, it restarts with fixed glibc malloc thresholds unless `--default-malloc` (benchmarks/README.md).
"""
import argparse, csv, os, platform, statistics, sys, time  # noqa: E401
from pathlib import Path

import torch

import timm
import timm_hvt  # noqa: F401  (registers the models)

FORMATS = ('NLC', 'NCHW')
STEADY_MALLOC = ('glibc.malloc.mmap_threshold=33554432:glibc.malloc.trim_threshold=4294967296:'
                 'glibc.malloc.top_pad=268435456')  # bench_hvt.py's


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--model', default='hvt_s_4')
    parser.add_argument('--batch', type=int, default=8)
    parser.add_argument('--rounds', type=int, default=15)
    parser.add_argument('--reps', type=int, default=3)
    parser.add_argument('--default-malloc', action='store_true', help="glibc's adaptive malloc thresholds")
    parser.add_argument('--out', type=Path, default=Path(__file__).parent / 'results' / 'intermediates.csv')
    args = parser.parse_args()
    tunables = os.environ.get('GLIBC_TUNABLES', '')
    if platform.libc_ver()[0] == 'glibc' and not args.default_malloc and 'glibc.malloc.' not in tunables:
        env = {**os.environ, 'GLIBC_TUNABLES': ':'.join(filter(None, [tunables, STEADY_MALLOC]))}
        os.execve(sys.executable, sys.orig_argv, env)  # the thresholds act only from the interpreter's start
    torch.set_num_threads(1)  # the CPU time of one thread's work
    model = timm.create_model(args.model).eval()
    x = torch.randn(args.batch, *model.pretrained_cfg['input_size'])

    def best_of(fmt: str) -> float:
        times = []
        for _ in range(args.reps):
            start = time.process_time()
            model.forward_intermediates(x, output_fmt=fmt)
            times.append(time.process_time() - start)
        return min(times)

    times = {fmt: [] for fmt in FORMATS}
    with torch.inference_mode():
        for fmt in FORMATS:  # warm-up
            best_of(fmt)
        for r in range(args.rounds):
            for fmt in (FORMATS if r % 2 == 0 else FORMATS[::-1]):
                times[fmt].append(best_of(fmt))
    per_round = [c / t for c, t in zip(times['NCHW'], times['NLC'])]
    ratio, best = statistics.median(per_round), {fmt: min(t) for fmt, t in times.items()}
    malloc = 'fixed thresholds' if STEADY_MALLOC in os.environ.get('GLIBC_TUNABLES', '') else 'default'
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, 'w', newline='') as f:
        writer = csv.writer(f)
        writer.writerow(['model', 'batch', 'threads', 'rounds', 'malloc', 'output_fmt', 'median_ms', 'best_ms',
                         'ratio_to_nlc', 'round_ratio_low', 'round_ratio_high', 'best_ratio_to_nlc'])
        for fmt in FORMATS:
            stats = (ratio, min(per_round), max(per_round), best[fmt] / best['NLC']) if fmt == 'NCHW' else (1,) * 4
            writer.writerow([args.model, args.batch, 1, args.rounds, malloc, fmt,
                             f'{statistics.median(times[fmt]) * 1e3:.1f}', f'{best[fmt] * 1e3:.1f}',
                             *(f'{v:.3f}' for v in stats)])
    print(f'{args.model} batch {args.batch}, malloc {malloc}: NCHW / NLC {ratio:.3f} (rounds {min(per_round):.3f}-'
          f'{max(per_round):.3f}; bests {best["NCHW"] * 1e3:.1f} / {best["NLC"] * 1e3:.1f} ms) -> {args.out}')


if __name__ == '__main__':
    main()
