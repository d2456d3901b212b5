"""The README's two-process example, taken from the README itself and run as written."""

import os
import re
import subprocess
import sys

README = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")


def readme_files():
    """``{file name: source}`` of every README code block whose first line is ``# NAME.py``."""
    with open(README) as readme:
        text = readme.read()
    blocks = re.findall(r"```python\n# (\w+\.py)[^\n]*\n(.*?)```", text, re.DOTALL)
    return {file_name: source for file_name, source in blocks}


def run(directory, file_name):
    return subprocess.run([sys.executable, file_name], cwd=directory, capture_output=True,
                          text=True, timeout=60)


def test_two_processes_one_address(registry_path, tmp_path):
    files = readme_files()
    for file_name in ("node.py", "writer.py", "reader.py"):
        (tmp_path / file_name).write_text(files[file_name])
    writer = run(tmp_path, "writer.py")
    assert writer.returncode == 0, writer.stderr
    reader = run(tmp_path, "reader.py")
    assert reader.returncode == 0, reader.stderr
    address = writer.stdout.split()[0]
    assert reader.stdout.split() == [address, "1", "2", "b'hello'"]
