"""After `pip install` (regular or editable), a fresh interpreter that only imports timm sees the HVT models.

Each install goes into a throwaway virtual environment that reuses this environment's packages (torch, timm, ...)
through a plain path entry, so only the installed timm-hvt's own .pth hook can register the models. Every check
runs in a subprocess started from a directory outside the source tree.
"""
import os
import re
import site
import subprocess
import sys
import venv
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

SEES_MODELS = """
import sys
assert 'timm' not in sys.modules and 'torch' not in sys.modules, 'imported at start-up'
import timm
names = timm.list_models('hvt*')
print(len(names))
if names:
    import timm_hvt
    print(timm_hvt.__file__)
    print(type(timm.create_model('hvt_s_4')).__name__)
"""


def _make_env(root: Path) -> Path:
    venv.create(root, with_pip=False, symlinks=True)
    python = root / 'bin' / 'python'
    purelib = subprocess.check_output([python, '-c', 'import sysconfig; print(sysconfig.get_paths()["purelib"])'],
                                      text=True).strip()
    # this environment's packages as a plain path: its own .pth files (our editable hook among them) stay inert
    Path(purelib, '_host_packages.pth').write_text('\n'.join(site.getsitepackages()) + '\n')
    return python


def _pip_install(python: Path, *args: str) -> None:
    subprocess.run(
        [sys.executable, '-m', 'pip', '--python', str(python), 'install', '--quiet', '--no-deps', *args],
        check=True, cwd=REPO,
    )


def _run(python: Path, code: str, cwd: Path, **env) -> subprocess.CompletedProcess:
    full_env = {k: v for k, v in os.environ.items() if k not in ('PYTHONPATH', 'TIMM_HVT_AUTOLOAD')}
    full_env.update(env)
    return subprocess.run([python, '-c', code], cwd=cwd, env=full_env, capture_output=True, text=True, check=True)


@pytest.fixture(scope='module', params=['regular', 'editable'])
def installed(request, tmp_path_factory):
    root = tmp_path_factory.mktemp(f'{request.param}_env')
    python = _make_env(root / 'venv')
    if request.param == 'regular':
        _pip_install(python, str(REPO))
    else:
        _pip_install(python, '--editable', str(REPO))
    return request.param, python, root


def test_import_timm_alone_registers_the_models(installed):
    kind, python, root = installed
    out = _run(python, SEES_MODELS, cwd=root).stdout.split('\n')
    assert out[0] == '10'
    package_file = Path(out[1])
    if kind == 'regular':
        assert root in package_file.parents  # the copy pip installed, not the source tree
    else:
        assert REPO in package_file.parents
    assert out[2] == 'HierarchicalVisionTransformer'


def test_autoload_can_be_turned_off(installed):
    _, python, root = installed
    assert _run(python, SEES_MODELS, cwd=root, TIMM_HVT_AUTOLOAD='0').stdout.split('\n')[0] == '0'


def test_startup_hook_imports_nothing_heavy(installed):
    """What the hook costs in time is measured by benchmarks/startup_cost.py; here: what it imports."""
    _, python, root = installed
    importtime = _run(python, 'pass', cwd=root, PYTHONPROFILEIMPORTTIME='1').stderr
    rows = [line for line in importtime.splitlines() if line.startswith('import time:')][1:]
    modules = [row.split('|')[-1].strip() for row in rows]
    assert '_timm_hvt_autoload' in modules, 'the .pth hook did not run'
    assert not {'torch', 'timm', 'timm_hvt', 'numpy'} & {name.split('.')[0] for name in modules}


def test_explicit_route_without_the_hook(installed):
    """timm's scripts' `--device-modules timm_hvt` does `importlib.import_module('timm_hvt')`."""
    _, python, root = installed
    code = "import importlib, timm; importlib.import_module('timm_hvt'); print(len(timm.list_models('hvt*')))"
    assert _run(python, code, cwd=root, TIMM_HVT_AUTOLOAD='0').stdout.strip() == '10'


def test_console_script_is_installed(installed):
    kind, python, root = installed
    script = python.parent / 'timm-hvt'
    if kind == 'editable':
        out = subprocess.run([script, '--help'], cwd=root, capture_output=True, text=True, check=True).stdout
        assert out.startswith('usage: timm-hvt')
    else:  # the whole default listing once: it builds every variant
        out = subprocess.run([script], cwd=root, capture_output=True, text=True, check=True).stdout
        assert re.search(r'^hvt_s_4\s+224\s+22\.12\s+1\.39', out, re.M)


def test_hook_without_its_module_stays_silent(tmp_path):
    """An editable install whose source tree moved away leaves the .pth behind: start-up must not print a traceback."""
    python = _make_env(tmp_path / 'venv')
    purelib = subprocess.check_output([python, '-c', 'import sysconfig; print(sysconfig.get_paths()["purelib"])'],
                                      text=True).strip()
    Path(purelib, 'timm_hvt_autoload.pth').write_text((REPO / 'timm_hvt_autoload.pth').read_text())
    result = _run(python, 'import sys; print("_timm_hvt_autoload" in sys.modules)', cwd=tmp_path)
    assert result.stdout.strip() == 'False'
    assert result.stderr == ''
