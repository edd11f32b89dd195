"""The `timm-hvt` command: lists the HVT variants with measured and published cost; subcommands for weights."""
import argparse
import sys
from typing import List, Optional

__all__ = ['main', 'variant_rows']


def variant_rows() -> List[dict]:
    """One row per registered variant: measured params / GMACs at its default resolution next to the paper's."""
    import timm
    import torch

    import timm_hvt  # noqa: F401  registers the models
    from timm_hvt.flops import count_gmacs, count_params
    from timm_hvt.paper import PAPER_RESULTS

    rows = []
    for name in timm.list_models('hvt_*'):
        with torch.device('meta'):
            model = timm.create_model(name)
        params = count_params(model)
        model = timm.create_model(name)
        cfg = model.pretrained_cfg
        paper = PAPER_RESULTS.get(name)
        tagged = timm.list_pretrained(f'{name}.*')
        rows.append(dict(
            model=name,
            img_size=cfg['input_size'][-1],
            params_m=params / 1e6,
            gmacs=count_gmacs(model, cfg['input_size']),
            paper_params_m=paper.params_m if paper else None,
            paper_gmacs=paper.gmacs if paper else None,
            paper_top1=paper.top1 if paper else None,
            weights=_weights_source(tagged[0]) if tagged else '-',
        ))
    return rows


def _weights_source(name_tag: str) -> str:
    from timm.models import get_pretrained_cfg
    cfg = get_pretrained_cfg(name_tag)
    return f'{name_tag}: hf-hub:{cfg.hf_hub_id} (fallback {cfg.url})'


def _fmt(value, spec: str) -> str:
    return '-' if value is None else format(value, spec)


def cmd_list(args: argparse.Namespace) -> int:
    rows = variant_rows()
    header = f'{"model":<10} {"img":>4} {"params(M)":>9} {"GMACs":>6} {"paper params":>12} ' \
             f'{"paper GFLOPs":>12} {"paper top-1":>11}  pretrained weights'
    print(header)
    print('-' * len(header))
    for r in rows:
        print(f'{r["model"]:<10} {r["img_size"]:>4} {r["params_m"]:>9.2f} {r["gmacs"]:>6.2f} '
              f'{_fmt(r["paper_params_m"], ".2f"):>12} {_fmt(r["paper_gmacs"], ".2f"):>12} '
              f'{_fmt(r["paper_top1"], ".2f"):>11}  {r["weights"]}')
    print('\nGMACs measured here count convolutions, linear layers and both attention matmuls, '
          'as the paper\'s "FLOPs" do.')
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog='timm-hvt',
        description='HVT vision transformers for timm. Without a command: list every registered variant.')
    sub = parser.add_subparsers(dest='command')
    p_list = sub.add_parser('list', help='list every registered HVT variant (the default)')
    p_list.set_defaults(func=cmd_list)
    parser.set_defaults(func=cmd_list)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == '__main__':
    sys.exit(main())
