"""An aarch64 CPython that runs on this x86_64 machine, to run the aarch64 wheel.

qemu-user (Debian's qemu-user-static) runs aarch64 programs one system call at a time
on the host kernel; the interpreter is Debian bookworm's arm64 CPython 3.11 with the
libraries it loads, unpacked into a sysroot that qemu's -L points at; pytest and msgpack
are PyPI's aarch64 wheels. Everything comes from Debian's archive and PyPI, the
registries this project builds from, and is kept in DIR for the next run. The archive is
plain HTTP, as apt uses it: the suite's InRelease is checked with gpgv against the
Debian archive keyring, the Packages indexes against InRelease's SHA-256 sums and each
package against its index, as apt does.

Usage: python build/release/emulated.py DIR   (prints DIR/run, the launcher: `DIR/run -m ...`)

The launcher runs `python3.11` under qemu with DIR/site on its path; a wheel under test
is unpacked into a directory added with PYTHONPATH (tests/wheels does that).
"""

from __future__ import annotations

import hashlib
import io
import lzma
import re
import shutil
import subprocess
import sys
import tarfile
import urllib.request
from pathlib import Path

ARCHIVE = "http://deb.debian.org/debian"
SUITE = "bookworm"
#: arm64 packages that CPython 3.11 and the stdlib modules pytest and tach import need
SYSROOT = ["libc6", "libgcc-s1", "python3.11-minimal", "libpython3.11-minimal", "libpython3.11-stdlib",
           "zlib1g", "libexpat1", "libffi8", "libssl3", "libbz2-1.0", "liblzma5", "libuuid1", "libcrypt1",
           "libtinfo6", "libncursesw6", "libsqlite3-0", "libreadline8"]
PYPI = ["pytest==9.2.0", "msgpack==1.2.4"]
DONE = ".complete"
KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"


class Unverified(ValueError):
    """Something downloaded does not match what the signed release says."""


def _get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=300) as r:
        return r.read()


def _release(tmp: Path) -> str:
    """The suite's InRelease, its signature checked against Debian's archive keyring."""
    signed = tmp / "InRelease"
    signed.write_bytes(_get(f"{ARCHIVE}/dists/{SUITE}/InRelease"))
    proc = subprocess.run(["gpgv", "--keyring", KEYRING, str(signed)], capture_output=True, text=True)
    if proc.returncode != 0:
        raise Unverified(f"InRelease of {SUITE}: gpgv with {KEYRING} failed: {proc.stderr.strip()}")
    return signed.read_text()


def _verified(data: bytes, sha256: str, what: str) -> bytes:
    if hashlib.sha256(data).hexdigest() != sha256:
        raise Unverified(f"{what}: SHA-256 differs from the signed index")
    return data


def _index(release: str, arch: str) -> dict[str, tuple[str, str]]:
    """Package -> (path in the archive, SHA-256), from the suite's Packages index for `arch`."""
    rel = f"main/binary-{arch}/Packages.xz"
    m = re.search(rf"^ ([0-9a-f]{{64}})\s+\d+ {re.escape(rel)}$", release.split("SHA256:", 1)[1], re.M)
    if m is None:
        raise Unverified(f"{rel} is not in the signed InRelease")
    data = _verified(_get(f"{ARCHIVE}/dists/{SUITE}/{rel}"), m.group(1), rel)
    index: dict[str, tuple[str, str]] = {}
    for block in lzma.decompress(data).decode().split("\n\n"):
        name, path = re.search(r"^Package: (\S+)", block, re.M), re.search(r"^Filename: (\S+)", block, re.M)
        sha = re.search(r"^SHA256: (\S+)", block, re.M)
        if name and path and sha:
            index.setdefault(name.group(1), (path.group(1), sha.group(1)))
    return index


def _package(index: dict[str, tuple[str, str]], name: str) -> bytes:
    if name not in index:
        raise ValueError(f"no package {name} in {SUITE}'s index")
    path, sha = index[name]
    return _verified(_get(f"{ARCHIVE}/{path}"), sha, path)


def _unpack_deb(data: bytes, into: Path) -> None:
    """A .deb is an ar archive; its data.tar.* member holds the files."""
    if not data.startswith(b"!<arch>\n"):
        raise ValueError("not a Debian package")
    pos = 8
    while pos < len(data):
        header = data[pos:pos + 60]
        name, size = header[:16].decode().strip().rstrip("/"), int(header[48:58].decode())
        if name.startswith("data.tar"):
            with tarfile.open(fileobj=io.BytesIO(data[pos + 60:pos + 60 + size])) as tf:
                tf.extractall(into, filter="tar")
            return
        pos += 60 + size + (size & 1)
    raise ValueError("no data.tar in the package")


def prepare(root: Path) -> Path:
    if (root / DONE).exists():
        return root / "run"
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    release = _release(root)
    _unpack_deb(_package(_index(release, "amd64"), "qemu-user-static"), root / "qemu")
    for other in (root / "qemu").rglob("*"):  # one emulator of the package's ~30 (400 MB)
        if other.is_file() and other.name != "qemu-aarch64-static":
            other.unlink()
    arm64 = _index(release, "arm64")
    for pkg in SYSROOT:
        _unpack_deb(_package(arm64, pkg), root / "sysroot")
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--root-user-action=ignore",
                    "--disable-pip-version-check", "--only-binary=:all:", "--platform",
                    "manylinux2014_aarch64", "--python-version", "3.11", "--implementation", "cp",
                    "--target", str(root / "site"), *PYPI], check=True)
    run = root / "run"
    run.write_text(
        "#!/bin/sh\n"
        "# CPython 3.11 for aarch64 under qemu-user (build/release/emulated.py)\n"
        f'PYTHONPATH="${{PYTHONPATH:+$PYTHONPATH:}}{root}/site" exec "{root}/qemu/usr/bin/qemu-aarch64-static" '
        f'-L "{root}/sysroot" "{root}/sysroot/usr/bin/python3.11" "$@"\n')
    run.chmod(0o755)
    (root / DONE).write_text("")
    return run


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__.split("\n\n")[2])
    try:
        print(prepare(Path(sys.argv[1]).resolve()))
    except (OSError, ValueError, subprocess.CalledProcessError) as e:
        sys.exit(f"emulated.py: cannot prepare the aarch64 CPython: {e}")
