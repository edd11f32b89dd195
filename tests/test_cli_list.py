"""`timm-hvt` without a command lists every registered variant with measured and published cost."""
import re
import subprocess
import sys

import timm

from timm_hvt.cli import build_parser, cmd_list, main
from timm_hvt.paper import PAPER_RESULTS


def test_default_command_lists_every_variant(capsys):
    assert main([]) == 0
    out = capsys.readouterr().out
    rows = {line.split()[0]: line.split() for line in out.splitlines() if line.startswith('hvt_')}
    assert sorted(rows) == timm.list_models('hvt_*')
    for name, cols in rows.items():
        img, params, gmacs = int(cols[1]), float(cols[2]), float(cols[3])
        assert img == 224
        paper = PAPER_RESULTS.get(name)
        if paper is None:
            assert cols[4:8] == ['-', '-', '-', '-']  # no paper figures, no weights
            continue
        # measured == published, side by side
        assert (params, gmacs) == (paper.params_m, paper.gmacs)
        assert (float(cols[4]), float(cols[5]), float(cols[6])) == (paper.params_m, paper.gmacs, paper.top1)
        url = timm.models.get_pretrained_cfg(f'{name}.in1k').url  # no hub repo is pinned yet: the release
        assert f'{name}.in1k: {url}' in ' '.join(cols)


def test_list_is_also_an_explicit_command():
    assert build_parser().parse_args(['list']).func is cmd_list is build_parser().parse_args([]).func


def test_a_closed_pipe_ends_quietly():
    # `timm-hvt | head -1`, without the race: the reader is gone before the command writes anything
    proc = subprocess.Popen([sys.executable, '-m', 'timm_hvt.cli'], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=240) == 141 and err == ''
