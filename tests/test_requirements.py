"""Each requirements file resolves against PyPI, as pip would install it on a fresh machine.

`pip install --dry-run --ignore-installed --report --use-feature=fast-deps` resolves the whole set from the wheels'
metadata, read with HTTP range requests, without downloading a wheel (the test checks pip's log for it: a plain
dry run fetches every wheel whole where the index does not advertise the metadata files, gigabytes for vLLM's set)
and without this machine's pip configuration (local wheel folders, constraints). The sets:
- requirements/vllm-server.txt: the reward's vLLM server alone (its own environment);
- requirements/gpu-vllm.txt + kframes's own dependencies (pyproject.toml): the GPU training environment with vLLM
  generation, where TRL, vLLM (inside TRL's supported range), torch and transformers must agree with kframes;
- kframes's dependencies with the requirements/cpu.txt constraints: the CPU environment `make install` builds.
Where PyPI cannot be reached the tests skip and say so; any other failure fails. Each takes well under a minute on a fast link.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name

from stages.grpo import trl_vllm_range

ROOT = Path(__file__).resolve().parents[1]
PYPI = "https://pypi.org/simple"
pytestmark = pytest.mark.slow


def _pypi_unreachable() -> str | None:
    import httpx

    try:
        httpx.get(f"{PYPI}/pip/", timeout=30, follow_redirects=True).raise_for_status()
    except httpx.HTTPError as exc:
        return f"PyPI ({PYPI}) is unreachable from this machine ({exc}); the requirements files were not resolved"
    return None


@pytest.fixture(scope="module")
def pypi() -> None:
    reason = _pypi_unreachable()
    if reason:
        pytest.skip(reason)


def pins(path: Path) -> dict[str, str]:
    """`name==version` lines of a requirements file."""
    out = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            req = Requirement(line)
            (spec,) = req.specifier
            assert spec.operator == "==", f"{path.name}: {line} is not a pin"
            out[canonicalize_name(req.name)] = spec.version
    return out


def project_dependencies(extra: str | None = None) -> list[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return [*project["dependencies"], *(project["optional-dependencies"][extra] if extra else [])]


def resolve(args: list[str], tmp_path: Path) -> dict[str, str]:
    """What pip would install for `args` (requirement specifiers and -r/-c options), name -> version."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    env["PIP_CONFIG_FILE"] = os.devnull  # no local wheel folders, extra indexes or site constraints
    report = tmp_path / "report.json"
    cmd = [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--report", str(report),
           "--use-feature=fast-deps", "--index-url", PYPI, "--disable-pip-version-check", "--progress-bar", "off", *args]
    if os.environ.get("PIP_CERT"):
        cmd += ["--cert", os.environ["PIP_CERT"]]
    proc = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, f"pip could not resolve {args}:\n{proc.stderr[-4000:]}"
    wheels = re.findall(r"Downloading (\S+\.whl)\b", proc.stdout)
    assert not wheels, f"the dry run downloaded wheels: {wheels[:5]}"
    installs = json.loads(report.read_text())["install"]
    return {canonicalize_name(i["metadata"]["name"]): i["metadata"]["version"] for i in installs}


def in_project_range(name: str, version: str) -> bool:
    for line in project_dependencies():
        req = Requirement(line)
        if canonicalize_name(req.name) == name:
            return req.specifier.contains(version, prereleases=True)
    raise AssertionError(f"{name} is not a dependency in pyproject.toml")


def test_the_reward_server_resolves_to_vllm_033(pypi, tmp_path: Path) -> None:
    path = ROOT / "requirements/vllm-server.txt"
    resolved = resolve(["-r", str(path)], tmp_path)
    assert resolved["vllm"] == "0.33.0"
    for name, version in pins(path).items():  # every pin is what pip picks, so none is guessed
        assert resolved[name] == version, (name, version, resolved[name])


def test_the_gpu_vllm_environment_resolves_with_kframes(pypi, tmp_path: Path) -> None:
    path = ROOT / "requirements/gpu-vllm.txt"
    wanted = pins(path)
    resolved = resolve(["-r", str(path), *project_dependencies()], tmp_path)
    for name, version in wanted.items():
        assert resolved[name] == version, (name, version, resolved[name])
    assert resolved["trl"] == "1.16.0"
    assert resolved["vllm"] in SpecifierSet(trl_vllm_range())  # inside the range TRL 1.16 supports
    for name in ("torch", "torchvision", "transformers"):  # the bottom of the range kframes states (and tests)
        assert in_project_range(name, resolved[name]), (name, resolved[name])


def test_the_cpu_environment_resolves(pypi, tmp_path: Path) -> None:
    path = ROOT / "requirements/cpu.txt"
    resolved = resolve(["-c", str(path), *project_dependencies("test")], tmp_path)
    for name, version in pins(path).items():
        assert resolved[name] == version and in_project_range(name, version), (name, version, resolved[name])
    assert "vllm" not in resolved  # the CPU environment never gets vLLM
