"""Build hook: the wheel carries the API's .proto sources beside the generated code, in factpatch/v1/.

Everything else about the package is in pyproject.toml.
"""

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

PROTO_DIR = Path(__file__).resolve().parent / "proto" / "factpatch" / "v1"


class BuildPyWithProtos(build_py):
    def run(self):
        super().run()
        if self.editable_mode:
            return  # an editable install reads proto/ in the checkout
        out = Path(self.build_lib) / "factpatch" / "v1"
        out.mkdir(parents=True, exist_ok=True)
        for proto in sorted(PROTO_DIR.glob("*.proto")):
            shutil.copy2(proto, out / proto.name)


setup(cmdclass={"build_py": BuildPyWithProtos})
