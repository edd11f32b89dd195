"""The `timm-hvt` command: lists the HVT variants with measured and published cost; subcommands for weights."""
import argparse
import functools
import sys
from typing import List, Optional

__all__ = ['main', 'variant_rows']


def _figure(value: Optional[float]) -> str:
    return '-' if value is None else f'{value:.2f}'


def variant_rows() -> List[dict]:
    """One row per registered variant: measured params / GMACs at its default resolution next to the paper's."""
    import timm
    import torch

    from timm_hvt.flops import count_gmacs, count_params
    from timm_hvt.paper import PAPER_RESULTS

    rows = []
    for name in timm.list_models('hvt_*'):
        with torch.device('meta'):  # shapes are all that params and MACs need
            model = timm.create_model(name)
        cfg = model.pretrained_cfg
        paper = PAPER_RESULTS.get(name)
        rows.append(dict(
            model=name,
            img_size=cfg['input_size'][-1],
            params_m=count_params(model) / 1e6,
            gmacs=count_gmacs(model, cfg['input_size']),
            paper_params_m=paper.params_m if paper else None,
            paper_gmacs=paper.gmacs if paper else None,
            paper_top1=paper.top1 if paper else None,
            weights=f'{name}.{cfg["tag"]}: hf-hub:{cfg["hf_hub_id"]} (fallback {cfg["url"]})' if paper else '-',
        ))
    return rows


def cmd_list(args: argparse.Namespace) -> int:
    rows = variant_rows()
    header = f'{"model":<10} {"img":>4} {"params(M)":>9} {"GMACs":>6} {"paper params":>12} ' \
             f'{"paper GFLOPs":>12} {"paper top-1":>11}  pretrained weights'
    print(header)
    print('-' * len(header))
    for r in rows:
        print(f'{r["model"]:<10} {r["img_size"]:>4} {r["params_m"]:>9.2f} {r["gmacs"]:>6.2f} '
              f'{_figure(r["paper_params_m"]):>12} {_figure(r["paper_gmacs"]):>12} '
              f'{_figure(r["paper_top1"]):>11}  {r["weights"]}')
    print('\nGMACs measured here count convolutions, linear layers and both attention matmuls, '
          'as the paper\'s "FLOPs" do.')
    return 0


def _one_line_errors(cmd):
    """Report a command's failure as one line on stderr with exit status 1, without a traceback."""
    @functools.wraps(cmd)
    def run(args: argparse.Namespace) -> int:
        try:
            return cmd(args)
        except Exception as e:
            message = ' '.join([*str(e).split(), *' '.join(getattr(e, '__notes__', ())).split()]) or type(e).__name__
            print(f'timm-hvt {args.command}: error: {message}', file=sys.stderr)
            return 1
    return run


@_one_line_errors
def cmd_convert(args: argparse.Namespace) -> int:
    from timm_hvt.convert import convert_checkpoint
    result = convert_checkpoint(args.checkpoint, args.model, args.out, repo_id=args.repo_id, overwrite=args.overwrite)
    print(f'Wrote {result.model_name} ({result.params_m:.2f}M params, {result.gmacs:.2f} GMACs) to {result.out_dir}')
    print(f'Verified: reloaded through timm, max abs logits diff vs the source checkpoint {result.max_abs_diff:.3g}')
    print(f'Publish with: timm-hvt push {result.out_dir} --repo-id {result.repo_id}')
    return 0


@_one_line_errors
def cmd_push(args: argparse.Namespace) -> int:
    from timm_hvt.convert import push_folder
    files = push_folder(
        args.folder,
        args.repo_id,
        private=args.private,
        revision=args.revision,
        commit_message=args.commit_message,
        dry_run=args.dry_run,
    )
    verb = 'Would upload' if args.dry_run else 'Uploaded'
    print(f'{verb} to https://huggingface.co/{args.repo_id}:')
    for name, size in files:
        print(f'  {name}  ({size} bytes)')
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog='timm-hvt',
        description='HVT vision transformers for timm. Without a command: list every registered variant.')
    sub = parser.add_subparsers(dest='command')
    p_list = sub.add_parser('list', help='list every registered HVT variant (the default)')
    p_list.set_defaults(func=cmd_list)

    p_convert = sub.add_parser(
        'convert',
        help='convert a checkpoint (e.g. an authors\' release file) into a Hugging Face Hub folder',
        description='Write model.safetensors, config.json and a README.md model card for CHECKPOINT as MODEL, '
                    'then reload the folder through timm and check its logits against the checkpoint.')
    p_convert.add_argument('checkpoint', help='.pth / .bin / .safetensors file')
    p_convert.add_argument('--model', required=True, help='HVT model name, e.g. hvt_ti_1 or hvt_s_4.in1k')
    p_convert.add_argument('--out', required=True, help='folder to write')
    p_convert.add_argument('--repo-id', default=None, help='hub repo named in the model card (default: '
                                                           'the project namespace / model name)')
    p_convert.add_argument('--overwrite', action='store_true', help='replace --out if it exists')
    p_convert.set_defaults(func=cmd_convert)

    p_push = sub.add_parser(
        'push',
        help='upload a folder written by `convert` to the Hugging Face Hub',
        description='Upload model.safetensors, config.json and README.md of FOLDER to a hub repo (created if '
                    'needed). The token comes from HF_TOKEN or `hf auth login`.')
    p_push.add_argument('folder')
    p_push.add_argument('--repo-id', required=True, help='e.g. timm-hvt/hvt_ti_1.in1k')
    p_push.add_argument('--private', action='store_true', help='create the repo private')
    p_push.add_argument('--revision', default=None, help='branch to push to')
    p_push.add_argument('--commit-message', default='Upload HVT weights converted by timm-hvt')
    p_push.add_argument('--dry-run', action='store_true', help='only check the folder and list what would go up')
    p_push.set_defaults(func=cmd_push)
    parser.set_defaults(func=cmd_list)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == '__main__':
    sys.exit(main())
