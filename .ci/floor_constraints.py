"""Prints the pip constraints of .ci/run's floor environment: every requirement setup.cfg declares (install_requires,
and the test extra's setuptools) and pyproject.toml's build requirements, pinned at its declared lower bound; then
.ci/floors.txt (what the floor releases need besides); then .ci/constraints.txt for everything else.

A declared requirement without a '>=' lower bound is an error: every dependency's floor is tested.
"""
import configparser
import re
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
REQUIREMENT = re.compile(r'^([A-Za-z0-9][A-Za-z0-9._-]*)\s*>=\s*([0-9][0-9.]*)$')


def normalize(name: str) -> str:
    return re.sub(r'[-_.]+', '-', name).lower()


def pins(path: Path) -> dict:
    """name -> 'name==version' of a constraints file (comments and blank lines skipped)."""
    found = {}
    for line in path.read_text().splitlines():
        line = line.split('#', 1)[0].strip()
        if line:
            name, sep, _ = line.partition('==')
            if not sep:
                sys.exit(f'{path}: not a name==version pin: {line!r}')
            found[normalize(name)] = line
    return found


def floors() -> dict:
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / 'setup.cfg')
    declared = [r for r in cfg['options']['install_requires'].splitlines() if r.strip()]
    declared += [r for r in cfg['options.extras_require']['test'].splitlines() if r.strip().startswith('setuptools')]
    declared += tomllib.loads((ROOT / 'pyproject.toml').read_text())['build-system']['requires']
    found = {}
    for requirement in declared:
        match = REQUIREMENT.match(requirement.strip())
        if not match:
            sys.exit(f'declared requirement without a plain >= floor: {requirement!r}')
        name, version = normalize(match.group(1)), match.group(2)
        if found.get(name, version) != version:
            sys.exit(f'{name} is declared with two floors: {found[name]} and {version}')
        found[name] = version
    return {name: f'{name}=={version}' for name, version in found.items()}


def main() -> None:
    merged = dict(pins(ROOT / '.ci' / 'constraints.txt'))
    merged.update(pins(ROOT / '.ci' / 'floors.txt'))
    merged.update(floors())
    print('\n'.join(merged[name] for name in sorted(merged)))


if __name__ == '__main__':
    main()
