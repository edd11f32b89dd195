"""What the package metadata declares holds, and the release artifacts build as a release would make them.

- `python_requires` is checked statically: vermin's minimum-version analysis of the package, the start-up hook (its
  module, the .pth line and the code that line executes) and the build step (it runs under the installing Python)
  must not need a newer Python than the declared floor. The suite itself runs on one Python only.
- The sdist is built from the files of a clean checkout (what git tracks or would track), the wheel from that sdist
  (as `python -m build` does), both without build isolation (no network: the environment's setuptools builds, at
  the newest pinned version in the main run and at the declared floor in .ci/run's floor run; tests/conftest.py);
  `twine check` passes on both; the wheel carries the start-up hook (the .pth file and PEP 829's .start file) and
  the license. That the installed wheel registers the models on `import timm` is tested in test_autoload.py.
"""
import ast
import configparser
import re
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = 'timm_hvt'
HOOK_MODULE = '_timm_hvt_autoload.py'
HOOK_PTH = 'timm_hvt_autoload.pth'
HOOK_START = 'timm_hvt_autoload.start'
BUILD_STEP = 'build_hooks.py'
LICENSE = 'LICENSE'
VERMIN = [sys.executable, '-c', 'import sys, vermin; sys.exit(vermin.main())', '--no-config-file', '--no-tips',
          '--format', 'parsable',
          '--eval-annotations',  # torch.jit.script and timm evaluate annotations at run time
          '--feature', 'union-types']  # `X | Y` outside annotations too (3.10)


def _setup_cfg() -> configparser.ConfigParser:
    cfg = configparser.ConfigParser()
    cfg.read(REPO / 'setup.cfg')
    return cfg


def _python_floor() -> tuple:
    spec = _setup_cfg()['options']['python_requires'].strip()
    found = re.fullmatch(r'>=\s*3\.(\d+)', spec)
    assert found, f'python_requires {spec!r} is not of the form >=3.N'
    return 3, int(found.group(1))


def _version(text: str) -> tuple:
    return tuple(int(part) for part in text.split('.'))


def _vermin(paths: list, cwd: Path) -> dict:
    """vermin's parsable report: {'minimum': '3.8' (or '~3': nothing found), 'files': {path: '3.6'}, 'rules': [...]}."""
    proc = subprocess.run([*VERMIN, *map(str, paths)], cwd=cwd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f'vermin failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}'
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    assert lines and lines[-1].startswith(':::'), f'no verdict from vermin:\n{proc.stdout[-3000:]}'
    files, rules = {}, []
    for line in lines[:-1]:
        path, row, column, _py2, py3, *feature = line.split(':')
        if not row and not column:
            files[path] = py3
        else:
            rules.append(line)
    return dict(minimum=lines[-1].split(':')[4], files=files, rules=rules)


def _exceeds(version: str, floor: tuple) -> bool:
    assert not version.startswith('!'), f'vermin finds the code incompatible with Python 3: {version}'
    return not version.startswith('~') and _version(version) > floor


def _executed_by_pth(pth: Path) -> list:
    """The source strings the .pth line runs through exec() (site.py executes the line itself)."""
    return [node.args[0].value for node in ast.walk(ast.parse(pth.read_text()))
            if isinstance(node, ast.Call) and getattr(node.func, 'id', None) == 'exec'
            and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)]


def test_code_needs_no_newer_python_than_python_requires(tmp_path):
    floor = _python_floor()
    exec_sources = _executed_by_pth(REPO / HOOK_PTH)
    assert exec_sources, f'{HOOK_PTH} executes no code: update this test to what it runs'
    for i, source in enumerate(exec_sources):
        (tmp_path / f'pth_exec_{i}.py').write_text(source)
    modules = sorted((REPO / PACKAGE).rglob('*.py'))
    paths = [*modules, REPO / HOOK_MODULE, REPO / HOOK_PTH, REPO / BUILD_STEP, *sorted(tmp_path.glob('pth_exec_*.py'))]
    report = _vermin(paths, tmp_path)

    missing = [str(p) for p in paths if str(p) not in report['files']]
    assert not missing, f'vermin did not analyse {missing}'
    too_new = {path: version for path, version in report['files'].items() if _exceeds(version, floor)}
    assert not too_new and not _exceeds(report['minimum'], floor), (
        f'python_requires is >={floor[0]}.{floor[1]}, but vermin finds code that needs a newer Python: {too_new}\n'
        + '\n'.join(r for r in report['rules'] if _exceeds(r.split(':')[4], floor)))
    print(f"vermin: the package, the start-up hook and the build step need Python >= {report['minimum']} "
          f"(python_requires >={floor[0]}.{floor[1]}); {len(paths)} files")


def test_vermin_reports_code_newer_than_the_floor(tmp_path):
    """The analysis above can fail: code of the next Python versions (syntax and standard library) is reported."""
    floor = _python_floor()
    newer = tmp_path / 'newer.py'
    newer.write_text('import tomllib\n'
                     'from typing import Self\n'
                     'try:\n    pass\nexcept* ValueError:\n    pass\n')
    assert floor < (3, 11), 'pick code of a Python newer than the floor for this check'
    report = _vermin([newer], tmp_path)
    assert _version(report['minimum']) == (3, 11)


def test_classifiers_list_the_tested_pythons_and_the_license():
    metadata = _setup_cfg()['metadata']
    classifiers = [c.strip() for c in metadata['classifiers'].strip().splitlines()]
    pythons = sorted(_version(c.rsplit('::', 1)[1].strip()) for c in classifiers
                     if re.fullmatch(r'Programming Language :: Python :: 3\.\d+', c))
    assert pythons and pythons[0] == _python_floor(), f'lowest Python classifier {pythons[:1]} != python_requires'
    assert pythons == [(3, minor) for minor in range(pythons[0][1], pythons[-1][1] + 1)], 'a Python is left out'
    assert sys.version_info[:2] in pythons, f'this suite runs on Python {sys.version_info[:2]}, not in the classifiers'
    assert metadata['license'].strip() == 'Apache-2.0'
    assert 'License :: OSI Approved :: Apache Software License' in classifiers
    assert metadata['license_files'].strip() == LICENSE
    text = (REPO / LICENSE).read_text()
    assert text.split()[:4] == ['Apache', 'License', 'Version', '2.0,'] and 'END OF TERMS AND CONDITIONS' in text


def _package_modules() -> list:
    return sorted(p.relative_to(REPO).as_posix() for p in (REPO / PACKAGE).rglob('*.py'))


@pytest.mark.smoke
def test_sdist_holds_what_building_the_wheel_needs(release_artifacts):
    with tarfile.open(release_artifacts['sdist']) as tar:
        top = tar.getnames()[0].split('/')[0]
        names = {name.split('/', 1)[1] for name in tar.getnames() if '/' in name}
        license_bytes = tar.extractfile(f'{top}/{LICENSE}').read()
    needed = {BUILD_STEP, HOOK_PTH, HOOK_START, HOOK_MODULE, LICENSE, 'README.md', 'setup.cfg', 'pyproject.toml',
              *_package_modules()}
    assert needed <= names, f'missing from the sdist: {sorted(needed - names)}'
    assert license_bytes == (REPO / LICENSE).read_bytes()


@pytest.mark.smoke
def test_wheel_carries_the_start_up_hook_license_and_requirements(release_artifacts):
    with zipfile.ZipFile(release_artifacts['wheel']) as whl:
        names = set(whl.namelist())
        dist_info, = {n.split('/')[0] for n in names if n.split('/')[0].endswith('.dist-info')}
        licenses = [n for n in names if n.startswith(dist_info + '/') and n.rsplit('/', 1)[-1] == LICENSE]
        assert len(licenses) == 1, f'no single {LICENSE} in {dist_info}: {sorted(names)}'
        assert whl.read(licenses[0]) == (REPO / LICENSE).read_bytes()
        for hook in (HOOK_PTH, HOOK_START):  # at the root: lands in site-packages
            assert whl.read(hook) == (REPO / hook).read_bytes(), hook
        metadata = whl.read(f'{dist_info}/METADATA').decode()
        entry_points = configparser.ConfigParser()
        entry_points.read_string(whl.read(f'{dist_info}/entry_points.txt').decode())
    assert {HOOK_MODULE, *_package_modules()} <= names, f'missing from the wheel: {sorted(names)}'

    def field(name):
        return [line.split(':', 1)[1].strip() for line in metadata.splitlines() if line.startswith(name + ':')]

    options = _setup_cfg()['options']
    assert field('Requires-Python') == [options['python_requires'].strip()]
    declared = {re.sub(r'\s+', '', r).lower().replace('_', '-') for r in options['install_requires'].split() if r}
    requires = {re.sub(r'\s+', '', r).lower().replace('_', '-') for r in field('Requires-Dist') if ';' not in r}
    assert requires == declared
    assert LICENSE in field('License-File')
    # pip writes the `timm-hvt` command from these (test_autoload.py looks at it, test_readme.py runs it)
    declared_scripts = dict(line.replace(' ', '').split('=', 1) for line in
                            _setup_cfg()['options.entry_points']['console_scripts'].strip().splitlines())
    assert dict(entry_points['console_scripts']) == declared_scripts == {'timm-hvt': 'timm_hvt.cli:main'}


@pytest.mark.smoke
def test_twine_check_passes(release_artifacts):
    proc = subprocess.run([sys.executable, '-m', 'twine', 'check', '--strict', str(release_artifacts['sdist']),
                           str(release_artifacts['wheel'])], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f'twine check failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-2000:]}'
