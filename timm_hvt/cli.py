"""The `timm-hvt` command: lists the HVT variants with measured and published cost; subcommands that convert, upload
and publish weights."""
import argparse
import functools
import os
import sys
from typing import List, Optional

__all__ = ['main', 'variant_rows']


def _figure(value: Optional[float]) -> str:
    return '-' if value is None else f'{value:.2f}'


def _weights_source(cfg: dict) -> str:
    """Where pretrained=True takes a variant's weights from: a pinned hub repo first, else the authors' release."""
    tagged = f'{cfg["architecture"]}.{cfg["tag"]}'
    if '@' in (cfg['hf_hub_id'] or ''):
        return f'{tagged}: hf-hub:{cfg["hf_hub_id"]} (fallback {cfg["url"]})'
    return f'{tagged}: {cfg["url"]}'


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
            weights=_weights_source(cfg) if cfg['url'] else '-',
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
        from timm_hvt.errors import describe_error
        try:
            return cmd(args)
        except BrokenPipeError:
            raise
        except Exception as e:
            print(f'timm-hvt {args.command}: error: {describe_error(e)}', file=sys.stderr)
            return 1
    return run


@_one_line_errors
def cmd_convert(args: argparse.Namespace) -> int:
    from timm_hvt.convert import convert_checkpoint
    result = convert_checkpoint(args.checkpoint, args.model, args.out, repo_id=args.repo_id, overwrite=args.overwrite,
                                img_size=tuple(args.img_size) if args.img_size else None)
    print(f'Wrote {result.model_name} ({result.params_m:.2f}M params, {result.gmacs:.2f} GMACs) to {result.out_dir}')
    print(f'Verified: reloaded through timm, max abs logits diff vs the source checkpoint {result.max_abs_diff:.3g}')
    print(f'Publish with: timm-hvt push {result.out_dir} --repo-id {result.repo_id}')
    return 0


@_one_line_errors
def cmd_push(args: argparse.Namespace) -> int:
    from timm_hvt.push import push_folder
    files, commit = push_folder(
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
    if commit:
        print(f'{args.repo_id}@{commit}')
    return 0


@_one_line_errors
def cmd_publish(args: argparse.Namespace) -> int:
    from timm_hvt.publish import pinned_rows, publish
    results = publish(args.namespace, sources=args.sources, out=args.out, dry_run=args.dry_run, tags=args.tag)
    failed = [r.tag for r in results if r.error]
    print(f'\n{len(results) - len(failed)} of {len(results)} tags converted'
          + ('' if args.dry_run else ' and uploaded') + (f'; failed: {", ".join(failed)}' if failed else ''))
    done = [r for r in results if not r.error]
    if done:
        cfgs, hashes = pinned_rows(args.namespace, done)
        print('To pin them, these rows in timm_hvt/hvt.py: of default_cfgs,', *cfgs, 'and of RELEASE_SHA256,', *hashes,
              sep='\n')
    for r in done:
        repo_id = f'{args.namespace}/{r.tag}'
        print(f'{repo_id}@{r.commit}' if r.commit else f'{repo_id}: dry run, not uploaded')
    return 1 if failed else 0


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
    p_convert.add_argument('--img-size', type=int, nargs=2, metavar=('H', 'W'), default=None,
                           help='the size the checkpoint was trained at; needed when its patch grid is not square')
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

    p_publish = sub.add_parser(
        'publish',
        help='convert the authors\' six released checkpoints and upload them to NAMESPACE/<tag>',
        description='For each released tag: take the authors\' file (from --sources, under its release file name, '
                    'else as pretrained=True does: from torch\'s hub cache or downloaded there), print its sha256, '
                    'convert and verify it as `convert` does into OUT/NAMESPACE/<tag>, and upload that folder to '
                    'NAMESPACE/<tag>, printing the commit to pin. A failing tag does not stop the others; the exit '
                    'status is 0 only if every tag succeeded.')
    p_publish.add_argument('--namespace', required=True, help='hub user or organisation, e.g. timm-hvt')
    p_publish.add_argument('--sources', default=None, help='folder of the release files (e.g. scale_hvt_ti_4.pth)')
    p_publish.add_argument('--out', default='hub', help='where to write the folders (default: ./hub)')
    p_publish.add_argument('--dry-run', action='store_true', help='convert and verify, upload nothing')
    p_publish.add_argument('--tag', action='append', default=None,
                           help='only this tag (repeatable), e.g. hvt_ti_1.in1k; default: all six')
    p_publish.set_defaults(func=cmd_publish)
    parser.set_defaults(func=cmd_list)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        status = args.func(args)
        sys.stdout.flush()  # here, so that a closed pipe is caught below rather than at interpreter exit
    except BrokenPipeError:  # the reader went away (`timm-hvt | head`): stop quietly, as `yes | head` does
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141  # 128 + SIGPIPE, what a shell reports for a writer stopped by a closed pipe
    return status


if __name__ == '__main__':
    sys.exit(main())
