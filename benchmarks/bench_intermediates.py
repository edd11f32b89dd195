"""What the NCHW maps of `forward_intermediates` cost over its NLC tokens: hvt_s_4, every block, eval, one thread.
Each interleaved round keeps each format's best of `--reps` in CPU time (load elsewhere takes wall time, little CPU
time); NCHW / NLC is the median of the rounds' ratios, with the lowest and highest round and the ratio of the bests.
"""
import argparse, csv, os, statistics, time  # noqa: E401
from pathlib import Path

import torch

import timm
import timm_hvt  # noqa: F401  (registers the models)
from benchmarks import STEADY_MALLOC, restart_with_steady_malloc

FORMATS = ('NLC', 'NCHW')


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--model', default='hvt_s_4')
    parser.add_argument('--batch', type=int, default=8)
    parser.add_argument('--rounds', type=int, default=15)
    parser.add_argument('--reps', type=int, default=3)
    parser.add_argument('--default-malloc', action='store_true', help="glibc's adaptive malloc thresholds")
    parser.add_argument('--out', type=Path, default=Path(__file__).parent / 'results' / 'intermediates.csv')
    args = parser.parse_args()
    if not args.default_malloc:
        restart_with_steady_malloc()
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
