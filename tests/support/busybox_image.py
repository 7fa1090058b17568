"""A tiny image for container nodes: a static busybox, imported into the engine.

No registry and no debootstrap: the rootfs is ``bin/busybox`` (Debian's
busybox-static, ``/bin/busybox``) plus the applet symlinks the tests use, as a
tar that ``docker import`` turns into an image. Its tag is the hash of that
tar, so the image is built once and reused while busybox does not change.
"""

from __future__ import annotations

import hashlib
import io
import subprocess
import tarfile
from pathlib import Path

from support.docker_engine import LABEL, docker
from support.need import need

BUSYBOX = Path("/bin/busybox")
REPOSITORY = "vw-busybox"
APPLETS = ("sh", "ip", "ping", "ifconfig", "sleep", "cat", "ls", "echo", "true", "hostname")


def rootfs_tar() -> bytes:
    """bin/busybox, a symlink per applet, empty /proc /sys /dev /etc /tmp; reproducible."""
    need(BUSYBOX.is_file(), f"needs a static busybox at {BUSYBOX} (apt-get install "
         "busybox-static)")
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for directory in ("bin", "proc", "sys", "dev", "etc", "tmp"):
            info = tarfile.TarInfo(directory)
            info.type, info.mode = tarfile.DIRTYPE, 0o755
            tar.addfile(info)
        data = BUSYBOX.read_bytes()
        info = tarfile.TarInfo("bin/busybox")
        info.size, info.mode = len(data), 0o755
        tar.addfile(info, io.BytesIO(data))
        for applet in APPLETS:
            info = tarfile.TarInfo(f"bin/{applet}")
            info.type, info.linkname = tarfile.SYMTYPE, "busybox"
            tar.addfile(info)
    return out.getvalue()


def busybox_image() -> str:
    """``vw-busybox:HASH`` in the local engine, imported unless already there."""
    tar = rootfs_tar()
    tag = f"{REPOSITORY}:{hashlib.sha256(tar).hexdigest()[:16]}"
    if docker("image", "inspect", tag, check=False).returncode == 0:
        return tag
    proc = subprocess.run(["docker", "import", "--change", "CMD [\"/bin/sh\"]",
                           "--change", f"LABEL {LABEL}", "-", tag],
                          input=tar, capture_output=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")
    return tag
