"""Build step: put timm_hvt_autoload.pth at the root of the wheel (site-packages), editable installs included."""
import os

from setuptools.command.build_py import build_py

PTH_FILE = 'timm_hvt_autoload.pth'
PTH_SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), PTH_FILE)


class BuildPyWithPth(build_py):
    def run(self):
        super().run()
        if self.editable_mode:
            # editable wheels are assembled from the install dir; build_lib only feeds the import mapping
            target_dir = self.get_finalized_command('install').install_lib
        else:
            target_dir = self.build_lib
        self.copy_file(PTH_SOURCE, os.path.join(target_dir, PTH_FILE), preserve_mode=0)

    def get_outputs(self, include_bytecode=True):
        return [*super().get_outputs(include_bytecode), os.path.join(self.build_lib, PTH_FILE)]
