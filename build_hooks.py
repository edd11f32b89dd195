"""Build step: ship timm_hvt_autoload.pth at the root of the wheel (site-packages), also in editable installs."""
import os

from setuptools.command.build_py import build_py

PTH_FILE = 'timm_hvt_autoload.pth'


class BuildPyWithPth(build_py):
    def run(self):
        super().run()
        src = os.path.join(os.path.dirname(os.path.abspath(__file__)), PTH_FILE)
        self.copy_file(src, os.path.join(self.build_lib, PTH_FILE), preserve_mode=0)

    def get_outputs(self, include_bytecode=True):
        return [*super().get_outputs(include_bytecode), os.path.join(self.build_lib, PTH_FILE)]

    def get_output_mapping(self):
        mapping = dict(super().get_output_mapping())
        src = os.path.join(os.path.dirname(os.path.abspath(__file__)), PTH_FILE)
        mapping[os.path.join(self.build_lib, PTH_FILE)] = src
        return mapping
