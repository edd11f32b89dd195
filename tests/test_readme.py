"""The README runs as written. Its fenced blocks are taken in order: every shell command and every Python block
either runs here, offline on a CPU, or says what it needs with a `# needs: ...` comment (a network, a GPU, timm's
scripts, ImageNet); those are only checked for syntax. The stand-in weights are random, in the authors' layout,
put where the README says weights come from (the current folder for `convert`, `release/` for `publish`, torch's hub
cache for `pretrained=True`); `cat.jpg` is scikit-image's photo of a cat. The tables and the quoted log lines are
checked against the code, and the training recipe's augmentation against the installed Pillow.

The Python blocks run in one interpreter, started fresh for the first of them, in README order between the shell
commands, as a reader running them in one session would; each block in a namespace of its own (a block that needs
another's names fails). Importing torch, timm and the deploy libraries once instead of once per block saves most of
this file's time."""
import copy
import json
import os
import random
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import List, NamedTuple

import numpy as np
import pytest
import timm
from PIL import Image

from _weights_helpers import closed_port, fake_hub, save_authors_checkpoint
from timm_hvt.paper import PAPER_RESULTS

RELEASED = timm.list_pretrained('hvt_*')

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / 'README.md').read_text(encoding='utf-8')
NEEDS = re.compile(r'#\s*needs:\s*(\S.*)')


class Step(NamedTuple):
    kind: str  # 'bash' or 'python'
    text: str
    needs: str  # '' when it runs here


def _steps() -> List[Step]:
    steps = []
    for lang, body in re.findall(r'^```(\w*)\n(.*?)^```', README, flags=re.M | re.S):
        if lang == 'python':
            first = body.lstrip().splitlines()[0]
            found = NEEDS.match(first)
            steps.append(Step('python', body, found.group(1) if found else ''))
        elif lang == 'bash':
            for line in body.replace('\\\n', ' ').splitlines():
                command = line.strip()
                if command and not command.startswith('#'):
                    found = NEEDS.search(command)
                    steps.append(Step('bash', command, found.group(1) if found else ''))
    return steps


STEPS = _steps()


def _image(path: Path) -> Path:
    from skimage import data
    Image.fromarray(data.chelsea()).save(path)
    return path


@pytest.fixture(scope='module')
def checkout(tmp_path_factory):
    """A folder that stands in for the user's checkout and home: the repo's tests/ and benchmarks/, cat.jpg, the
    authors' files where the README puts them, and an environment with no network, no GPU, no logging set up."""
    work = tmp_path_factory.mktemp('checkout')
    for name in ('tests', 'benchmarks'):
        (work / name).symlink_to(ROOT / name)
    _image(work / 'cat.jpg')
    home = work / 'home'
    torch_cache = home / '.cache' / 'torch' / 'hub' / 'checkpoints'
    (work / 'release').mkdir()
    torch_cache.mkdir(parents=True)
    for seed, tag in enumerate(RELEASED):
        file_name = timm.models.get_pretrained_cfg(tag).url.rsplit('/', 1)[-1]
        save_authors_checkpoint(work / 'release' / file_name, tag.split('.')[0], seed=seed)
        (torch_cache / file_name).symlink_to(work / 'release' / file_name)
    (work / 'hvt_ti_1.pth').symlink_to(work / 'release' / 'hvt_ti_1.pth')
    env = {k: v for k, v in os.environ.items()
           if k not in ('TORCH_HOME', 'HF_HOME', 'HF_HUB_CACHE', 'XDG_CACHE_HOME', 'PYTHONPATH')}
    env.update(HOME=str(home), HF_HUB_OFFLINE='1', HF_ENDPOINT=f'http://127.0.0.1:{closed_port()}',
               CUDA_VISIBLE_DEVICES='', PATH=f'{Path(sys.executable).parent}{os.pathsep}{env["PATH"]}')
    return work, env


# Reads (index, code) lines on stdin, runs each code in a namespace of its own with its output captured, and writes
# one RESULT line per block: [index, traceback or '', stdout, stderr].
SESSION = r"""
import contextlib, io, json, sys, traceback
channel = sys.stdout
for line in sys.stdin:
    index, code = json.loads(line)
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            exec(compile(code, f'README.md, block {index}', 'exec'), {'__name__': '__main__'})
            error = ''
        except BaseException:
            error = traceback.format_exc()
    channel.write('\nRESULT ' + json.dumps([index, error, out.getvalue(), err.getvalue()]) + '\n')
    channel.flush()
"""


class PythonSession:
    """The interpreter that runs the README's Python blocks; what it writes below Python (C libraries) goes to a
    file, read back per block."""

    def __init__(self, work: Path, env: dict):
        self.stderr_path = work / 'python-session.stderr'
        self.stderr = open(self.stderr_path, 'w')
        self.proc = subprocess.Popen([sys.executable, '-c', SESSION], cwd=work, env=env, stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=self.stderr, text=True)

    def run(self, index: int, code: str) -> tuple:
        """(traceback or '', stdout, stderr) of the block."""
        start = self.stderr_path.stat().st_size
        self.proc.stdin.write(json.dumps([index, code]) + '\n')
        self.proc.stdin.flush()
        for line in self.proc.stdout:
            if line.startswith('RESULT '):
                _, error, out, err = json.loads(line[len('RESULT '):])
                with open(self.stderr_path) as f:
                    f.seek(start)
                    return error, out, err + f.read()
        raise AssertionError(f'the Python session ended (exit {self.proc.wait()}):\n'
                             f'{self.stderr_path.read_text()[-3000:]}')

    def close(self) -> None:
        self.proc.stdin.close()
        try:
            self.proc.wait(timeout=120)
        except subprocess.TimeoutExpired:  # a block still running (its test timed out)
            self.proc.kill()
            self.proc.wait()
        self.stderr.close()


@pytest.fixture(scope='module')
def python_session(checkout):
    session = PythonSession(*checkout)
    yield session
    session.close()


def test_every_step_runs_here_or_says_what_it_needs():
    assert len([s for s in STEPS if s.kind == 'python']) >= 2 and len([s for s in STEPS if s.kind == 'bash']) >= 10
    for step in STEPS:
        if step.kind == 'python':
            compile(step.text, 'README.md', 'exec')
        else:
            shlex.split(step.text, comments=True)
    runs = [s for s in STEPS if not s.needs]
    needs = {s.needs for s in STEPS if s.needs}
    assert any('GPU' in n for n in needs) and any('network' in n for n in needs)
    assert any(s.kind == 'python' for s in runs) and any(s.text.startswith('timm-hvt') for s in runs)


def _step_id(index: int) -> str:
    step = STEPS[index]
    return f'{step.kind}{index}' + (f'-{step.text.split()[0]}' if step.kind == 'bash' else '')


@pytest.mark.timeout(900)
@pytest.mark.parametrize('index', [i for i, s in enumerate(STEPS) if not s.needs], ids=_step_id)
def test_readme_step_runs(request, checkout, index):
    work, env = checkout
    step = STEPS[index]
    if step.kind == 'python':
        error, stdout, stderr = request.getfixturevalue('python_session').run(index, step.text)
    else:
        out = subprocess.run(['bash', '-c', step.text], cwd=work, env=env, capture_output=True, text=True,
                             timeout=840)
        error = '' if out.returncode == 0 else f'exit {out.returncode}'
        stdout, stderr = out.stdout, out.stderr
    assert not error, f'{step.text}\n--- error\n{error}\n--- stdout\n{stdout[-3000:]}\n--- stderr\n{stderr[-3000:]}'
    assert 'Traceback' not in stderr, stderr[-3000:]
    # `timm-hvt` imports timm_hvt before timm: the start-up hook then fires inside that import, and must stay quiet
    assert 'timm-hvt: models not registered' not in stderr, stderr[-3000:]


def _table(heading: str) -> List[List[str]]:
    """The rows of the first table after `heading` that name a model or tag (first cell in backquotes)."""
    lines = README[README.index(heading):].splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith('|'))
    end = next(i for i in range(start, len(lines)) if not lines[i].startswith('|'))
    return [[cell.strip().strip('`') for cell in line.strip('|').split('|')]
            for line in lines[start:end] if line.startswith('| `')]


def test_tables_match_the_code():
    models = {row[0]: row for row in _table('## Models')}
    assert sorted(models) == sorted(PAPER_RESULTS)
    for arch, (_, paper_name, _, _, _, gmacs, params, top1, top5) in models.items():
        paper = PAPER_RESULTS[arch]
        assert (paper_name, float(gmacs), float(params), float(top1), float(top5)) == (
            paper.paper_name, paper.gmacs, paper.params_m, paper.top1, paper.top5)
    weights = {row[0]: row for row in _table('## Pretrained weights')}
    assert sorted(weights) == sorted(RELEASED)
    for tag, (_, _, _, _, repo, release) in weights.items():
        cfg = timm.models.get_pretrained_cfg(tag)
        assert repo == cfg.hf_hub_id and cfg.url.endswith('/download/' + release)


QUOTE_LOAD = '''
import sys, timm
for _ in range(2):
    timm.create_model('hvt_ti_1', pretrained=True, depth=2, pretrained_cfg_overlay=dict(url=sys.argv[1]))
'''


def test_the_quoted_source_lines_are_what_a_load_prints(tmp_path):
    # the README's two lines, from a fresh interpreter: first load downloaded (no hub repo pinned), then cached
    quoted = re.search(r'```text\n(.*?)```', README[README.index('## Pretrained weights'):],
                       flags=re.S).group(1).splitlines()
    source = tmp_path / 'hvt_ti_1.pth'
    save_authors_checkpoint(source, 'hvt_ti_1', depth=2)
    env = {k: v for k, v in os.environ.items() if k not in ('TORCH_HOME', 'HF_HOME', 'HF_HUB_CACHE', 'XDG_CACHE_HOME')}
    with fake_hub('RepoNotFound') as hub:
        hub.files['/releases/hvt_ti_1.pth'] = source.read_bytes()
        env.update(HOME=str(tmp_path), HF_ENDPOINT=hub.url, HF_HUB_OFFLINE='0')
        url = hub.url + '/releases/hvt_ti_1.pth'
        out = subprocess.run([sys.executable, '-c', QUOTE_LOAD, url], capture_output=True, text=True, env=env,
                             timeout=240)
    assert out.returncode == 0, out.stderr[-3000:]
    printed = [line.replace(str(tmp_path), '~').replace(url, timm.models.get_pretrained_cfg('hvt_ti_1.in1k').url)
               for line in out.stderr.splitlines() if 'pretrained weights from' in line]
    assert len(printed) == len(quoted) == 2
    for line, quote in zip(printed, quoted):
        assert re.fullmatch(re.escape(quote).replace(re.escape('...'), '.*'), line), (quote, line)


def _rand_augment(aa: str):
    """timm's train transform for the --aa string `aa`, and the RandAugment inside it."""
    from timm.data import create_transform
    from timm.data.auto_augment import RandAugment
    transform = create_transform(224, is_training=True, auto_augment=aa)
    rand_augment, = [t for t in transform.transforms if isinstance(t, RandAugment)]
    return transform, rand_augment


def _always(op, magnitude: float = None):
    """The RandAugment op applied on every call, at its own magnitude draws or at `magnitude` (which, as a draw,
    is clipped to the op's cap)."""
    op = copy.copy(op)
    op.prob = 1.
    if magnitude is not None:
        op.magnitude, op.magnitude_std = magnitude, 0.
    return op


def test_the_recipe_augmentation_runs_on_real_photos():
    from skimage import data
    images = [Image.fromarray(getattr(data, name)()).convert('RGB').resize((128, 128))
              for name in ('astronaut', 'coffee', 'chelsea', 'rocket', 'immunohistochemistry')]
    recipes = {aa for s in STEPS if s.kind == 'bash' for aa in re.findall(r'--aa (\S+)', s.text)}
    assert recipes, 'the README gives no --aa string'
    for aa in sorted(recipes):
        transform, rand_augment = _rand_augment(aa)
        # every op of the policy at each whole magnitude from 0 up to past its cap, where a draw is clipped (the
        # levels ops use change at fractions of 10 that whole magnitudes reach; at the paper's cap of 10 posterize
        # keeps 0 bits)
        for op in rand_augment.ops:
            for magnitude in range(12):
                fixed = _always(op, magnitude)
                for image in images:
                    fixed(image)
        # and the whole train transform, its own draws
        random.seed(0)
        np.random.seed(0)
        for i in range(50):
            transform(images[i % len(images)])


def test_the_paper_augmentation_behaves_as_the_readme_says():
    # the paper's string draws posterize's magnitude around 9 (std 0.5) up to its cap of 10, where it keeps 0 bits:
    # Pillow >= 13 refuses that, within a few thousand draws; before, those draws were black
    import PIL
    notes = (ROOT / 'docs' / 'training.md').read_text(encoding='utf-8')
    assert '`--aa rand-m9-mstd0.5-inc1`' in notes and '`pillow<13`' in notes
    _, rand_augment = _rand_augment('rand-m9-mstd0.5-inc1')
    posterize, = [op for op in rand_augment.ops if op.name == 'PosterizeIncreasing']
    image = Image.new('RGB', (8, 8), (120, 80, 200))
    random.seed(0)
    if int(PIL.__version__.split('.')[0]) >= 13:
        with pytest.raises(ValueError):
            _always(posterize, magnitude=100)(image)
        with pytest.raises(ValueError):
            drawing = _always(posterize)
            for _ in range(5000):
                drawing(image)
    else:
        assert np.asarray(_always(posterize, magnitude=100)(image)).max() == 0
        drawing = _always(posterize)
        for _ in range(5000):
            drawing(image)
