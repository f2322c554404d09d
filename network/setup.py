"""evproto-network pins the protocol library of the same version (read from _version.py,
a link to the library's own)."""

import re
from pathlib import Path

from setuptools import setup

text = (Path(__file__).resolve().parent / "_version.py").read_text(encoding="utf-8")
version = re.search(r'__version__ = "([^"]+)"', text).group(1)  # type: ignore[union-attr]

setup(
    version=version,
    install_requires=[
        # The daemons read Modbus meters too (evcp-engine --meter-protocol modbus, evmeter-sim).
        f"evproto[modbus] == {version}",
        "click >= 8.1, < 9",
        "confluent-kafka >= 2.4, < 3",
        "rich >= 13.7, < 16",
        "aiohttp >= 3.9, < 4",
        "orjson >= 3.9, < 4",
        "cryptography >= 42, < 47",
    ],
)
