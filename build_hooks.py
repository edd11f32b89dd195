"""Build step: put the start-up hook at the root of the wheel (site-packages), editable installs included.

Two files run `_timm_hvt_autoload.install()` at interpreter start-up: `timm_hvt_autoload.pth` (an import line, read
by every Python that supports them) and `timm_hvt_autoload.start` (PEP 829's entry point; Pythons that read `.start`
files skip the import lines of the `.pth` of the same name).
"""
import os

from setuptools.command.build_py import build_py

HOOK_FILES = ('timm_hvt_autoload.pth', 'timm_hvt_autoload.start')
HERE = os.path.dirname(os.path.abspath(__file__))


class BuildPyWithPth(build_py):
    def run(self):
        super().run()
        if self.editable_mode:
            # editable wheels are assembled from the install dir; build_lib only feeds the import mapping
            target_dir = self.get_finalized_command('install').install_lib
        else:
            target_dir = self.build_lib
        for name in HOOK_FILES:
            self.copy_file(os.path.join(HERE, name), os.path.join(target_dir, name), preserve_mode=0)

    def get_outputs(self, include_bytecode=True):
        return [*super().get_outputs(include_bytecode), *(os.path.join(self.build_lib, n) for n in HOOK_FILES)]
