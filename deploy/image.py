#!/usr/bin/env python3
"""Build virtwire's container image: one image, `virtwire:<version>`, for every service.

    python deploy/image.py build [--base NAME] [--tag TAG] [--force]
    python deploy/image.py base [--rebuild]     # only the debootstrap base image
    python deploy/image.py dockerd              # only make sure a Docker engine answers
    python deploy/image.py deps                 # apt-get install docker.io debootstrap

Steps of `build`, each skipped when its result is already there:
1. ensure_dockerd(): a Docker engine must answer; when none runs (this machine has
   none by default) it starts `dockerd --storage-driver=vfs` in the background, with
   its bridges confined to 198.18.0.0/15 and no default bridge network.
2. ensure_base_image(): `virtwire-base:bookworm`, imported from a Debian bookworm
   minbase rootfs made by debootstrap (python3, python3-venv, iproute2,
   libpcap0.8), with
   bookworm-updates and -security applied and docs/man/locales pruned. The rootfs
   tarball is cached under .cache/docker/ of the repo, so a lost image re-imports
   in seconds.
3. The wheels: `pip wheel` of the project and `pip download` of its runtime
   dependencies (pinned by constraints.txt) as binary wheels for the base image's
   interpreter (probed: Python version, machine, libc), into build/docker/wheels.
4. `docker build --network none -f deploy/Dockerfile --build-arg BASE=...`, skipped
   when the image already carries the label of the same Dockerfile, base and wheels.

Stdlib only. The functions ensure_dockerd(), ensure_base_image() and build_image()
are the API for tests and for the orchestrator's docker backend; they raise
ImageError with a message meant for a person.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DOCKERFILE = REPO / "deploy" / "Dockerfile"
CACHE_DIR = REPO / ".cache" / "docker"
CONTEXT_DIR = REPO / "build" / "docker"
CONSTRAINTS = REPO / "constraints.txt"
# What `pip wheel` of the project needs (pyproject's readme, packages under services/).
WHEEL_SOURCES: tuple[str, ...] = (
    "pyproject.toml", "README.md", "LICENSE", "setup.py", "setup.cfg", "MANIFEST.in", "services",
)

DEFAULT_BASE = "virtwire-base:bookworm"
SUITE = "bookworm"
# libpcap0.8: `pcap:` match expressions (virtwire.net.match loads libpcap.so.0.8 to
# compile them), so assertions on services in containers take tcpdump's language too.
BASE_PACKAGES: tuple[str, ...] = ("python3", "python3-venv", "iproute2", "libpcap0.8")
MIRROR = os.environ.get("VIRTWIRE_DEBIAN_MIRROR", "http://deb.debian.org/debian")
SECURITY_MIRROR = os.environ.get(
    "VIRTWIRE_DEBIAN_SECURITY_MIRROR", "http://deb.debian.org/debian-security"
)
# Bump when the base recipe below changes: the image and tarball are then rebuilt.
BASE_RECIPE_VERSION = 1
# Debian packages the host needs for `build` (the Makefile installs them).
HOST_PACKAGES: tuple[str, ...] = ("docker.io", "debootstrap")

LABEL_BASE_RECIPE = "org.virtwire.base-recipe"
LABEL_CONTEXT = "org.virtwire.build-context"
LABEL_STAGE = "org.virtwire.stage=venv"  # set by deploy/Dockerfile on its build stage

# The engine this script starts. vfs works on any filesystem (no overlayfs needed).
# Every network Docker picks by itself comes from 198.18.0.0/15, and there is no
# default bridge: a container joins only the (internal) networks it is given.
DOCKERD_ARGS: tuple[str, ...] = (
    "--storage-driver=vfs",
    "--bridge=none",
    "--default-address-pool=base=198.18.0.0/15,size=24",
)
DOCKERD_LOG = CACHE_DIR / "dockerd.log"
DOCKER_SOCKET = Path("/var/run/docker.sock")
DOCKER_PIDFILE = Path("/var/run/docker.pid")

# What the base rootfs may drop: documentation, manuals, translations, apt's caches.
DPKG_EXCLUDES = """\
# virtwire image: no documentation, manuals or translations (licences stay).
path-exclude=/usr/share/doc/*
path-include=/usr/share/doc/*/copyright
path-exclude=/usr/share/man/*
path-exclude=/usr/share/info/*
path-exclude=/usr/share/locale/*
path-include=/usr/share/locale/locale.alias
path-exclude=/usr/share/lintian/*
"""

_PROBE = (
    "import json, platform, sys\n"
    "libc, libc_version = platform.libc_ver()\n"
    "print(json.dumps({'python': '%d.%d' % sys.version_info[:2],"
    " 'implementation': sys.implementation.name, 'machine': platform.machine(),"
    " 'libc': libc, 'libc_version': libc_version}))\n"
)


class ImageError(RuntimeError):
    """A step of the image build failed; the message says what to do."""


def log(message: str) -> None:
    print(f"[image] {message}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def _step(what: str) -> Iterator[None]:
    start = time.monotonic()
    log(f"{what} ...")
    yield
    log(f"{what}: done in {time.monotonic() - start:.1f}s")


@contextlib.contextmanager
def _locked(name: str) -> Iterator[None]:
    """Serialises concurrent builds (two test runs, a test and a person)."""
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    with open(CACHE_DIR / f"{name}.lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def project_version() -> str:
    with open(REPO / "pyproject.toml", "rb") as fh:
        version = tomllib.load(fh)["project"]["version"]
    if not isinstance(version, str):
        raise ImageError("pyproject.toml: project.version is not a string")
    return version


def default_tag() -> str:
    return f"virtwire:{project_version()}"


def _is_root() -> bool:
    return os.geteuid() == 0


def _stderr_fd() -> int | None:
    try:
        return sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):  # a test runner's capture object
        return None


def _run(
    argv: Sequence[str | Path],
    *,
    capture: bool = True,
    timeout: float | None = None,
    env: dict[str, str] | None = None,
    what: str | None = None,
) -> str:
    """Runs a command; returns its stdout, or raises ImageError with its output."""
    args = [str(a) for a in argv]
    try:
        proc = subprocess.run(
            args,
            stdin=subprocess.DEVNULL,
            # Uncaptured output goes to stderr: stdout is for results (the tag).
            stdout=subprocess.PIPE if capture else _stderr_fd(),
            stderr=subprocess.PIPE if capture else None,
            text=True,
            timeout=timeout,
            env=env,
            check=False,
        )
    except FileNotFoundError as exc:
        raise ImageError(f"{args[0]}: not found") from exc
    except subprocess.TimeoutExpired as exc:
        raise ImageError(f"{what or args[0]}: timed out after {timeout}s") from exc
    if proc.returncode != 0:
        detail = ""
        if capture:
            detail = "\n" + "\n".join(
                part.strip()[-4000:] for part in (proc.stdout, proc.stderr) if part.strip()
            )
        raise ImageError(
            f"{what or ' '.join(args[:3])} failed (exit {proc.returncode}){detail}".rstrip()
        )
    return proc.stdout or ""


# --- host tools ---------------------------------------------------------------


def missing_host_packages(packages: Sequence[str] = HOST_PACKAGES) -> list[str]:
    """The Debian packages of `packages` that are not installed."""
    missing = []
    for pkg in packages:
        proc = subprocess.run(
            ["dpkg-query", "-W", "-f=${Status}", pkg],
            capture_output=True,
            text=True,
            check=False,
        )
        if "install ok installed" not in proc.stdout:
            missing.append(pkg)
    return missing


def install_host_packages(packages: Sequence[str] = HOST_PACKAGES) -> None:
    """apt-get installs the missing ones (root only)."""
    missing = missing_host_packages(packages)
    if not missing:
        return
    if not _is_root():
        raise ImageError(
            f"missing Debian packages {' '.join(missing)}; as root: "
            f"apt-get install -y {' '.join(missing)}"
        )
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    with _step(f"apt-get install {' '.join(missing)}"):
        _run(["apt-get", "update", "-q"], env=env, timeout=600, what="apt-get update")
        _run(
            ["apt-get", "install", "-y", "-q", "--no-install-recommends", *missing],
            env=env,
            timeout=900,
            what=f"apt-get install {' '.join(missing)}",
        )


def docker_cli() -> str:
    path = shutil.which("docker")
    if path is None:
        raise ImageError("the docker CLI is not installed: apt-get install -y docker.io")
    return path


def docker(*args: str, capture: bool = True, timeout: float | None = None) -> str:
    return _run([docker_cli(), *args], capture=capture, timeout=timeout, what=f"docker {args[0]}")


# --- 1. the engine ------------------------------------------------------------


def docker_ready() -> bool:
    """True when a Docker engine answers the CLI."""
    try:
        proc = subprocess.run(
            [docker_cli(), "version", "--format", "{{.Server.Version}}"],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=20,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return proc.returncode == 0


def _pid_alive(pidfile: Path) -> bool:
    try:
        pid = int(pidfile.read_text().strip())
        os.kill(pid, 0)
    except (OSError, ValueError):
        return False
    return True


def _wait_ready(timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if DOCKER_SOCKET.exists() and docker_ready():
            return True
        time.sleep(0.5)
    return False


def ensure_dockerd(timeout: float = 90.0) -> None:
    """Makes sure a Docker engine answers; starts dockerd (vfs) when none runs.

    The dockerd it starts keeps running after this process (detached, logging to
    .cache/docker/dockerd.log), so later builds and tests find it.
    """
    docker_cli()
    if docker_ready():
        return
    if os.environ.get("DOCKER_HOST"):
        raise ImageError(f"DOCKER_HOST={os.environ['DOCKER_HOST']} does not answer")
    if _pid_alive(DOCKER_PIDFILE):
        log("a dockerd is starting; waiting for it")
        if _wait_ready(timeout):
            return
        raise ImageError(
            f"dockerd (pid file {DOCKER_PIDFILE}) runs but does not answer on {DOCKER_SOCKET}"
        )
    if not _is_root():
        raise ImageError(
            "no Docker engine is running and starting one needs root: run as root, "
            "or start dockerd yourself"
        )
    dockerd = shutil.which("dockerd")
    if dockerd is None:
        raise ImageError("dockerd is not installed: apt-get install -y docker.io")
    setsid = shutil.which("setsid")
    if setsid is None:
        raise ImageError("setsid (util-linux) is needed to start dockerd in the background")
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    with _step(f"starting {dockerd} {' '.join(DOCKERD_ARGS)} (log: {DOCKERD_LOG})"):
        with open(DOCKERD_LOG, "ab") as logfh:
            # setsid -f: dockerd runs in its own session, reparented to init, and holds
            # none of our file descriptors (a test runner's pipes would never close).
            subprocess.run(
                [setsid, "-f", dockerd, *DOCKERD_ARGS],
                stdin=subprocess.DEVNULL,
                stdout=logfh,
                stderr=subprocess.STDOUT,
                close_fds=True,
                check=True,
            )
        if not _wait_ready(timeout):
            tail = ""
            with contextlib.suppress(OSError):
                tail = "\n".join(DOCKERD_LOG.read_text(errors="replace").splitlines()[-15:])
            raise ImageError(f"dockerd did not come up within {timeout:.0f}s; log tail:\n{tail}")


# --- 2. the base image --------------------------------------------------------


def image_id(name: str) -> str | None:
    """The local image's id, or None when there is no such image."""
    proc = subprocess.run(
        [docker_cli(), "image", "inspect", "--format", "{{.Id}}", name],
        capture_output=True,
        text=True,
        check=False,
    )
    return proc.stdout.strip() if proc.returncode == 0 else None


def image_label(name: str, label: str) -> str | None:
    proc = subprocess.run(
        [docker_cli(), "image", "inspect", "--format", "{{json .Config.Labels}}", name],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        return None
    labels = json.loads(proc.stdout or "null") or {}
    value = labels.get(label)
    return value if isinstance(value, str) else None


def base_recipe() -> str:
    """A short hash of everything that shapes the base rootfs."""
    recipe = json.dumps(
        [BASE_RECIPE_VERSION, SUITE, BASE_PACKAGES, DPKG_EXCLUDES], sort_keys=True
    )
    return hashlib.sha256(recipe.encode()).hexdigest()[:16]


def base_tarball() -> Path:
    return CACHE_DIR / f"virtwire-base-{SUITE}-{base_recipe()}.tar"


def _mounts_under(root: Path) -> list[str]:
    prefix = str(root) + "/"
    points = []
    with open("/proc/self/mounts") as fh:
        for line in fh:
            point = line.split()[1].replace("\\040", " ")
            if point.startswith(prefix) or point == str(root):
                points.append(point)
    return sorted(points, key=len, reverse=True)


def _remove_rootfs(root: Path) -> None:
    """Removes a (possibly half-made) debootstrap tree, unmounting /proc etc. first."""
    if not root.exists():
        return
    for point in _mounts_under(root):
        subprocess.run(["umount", "-l", point], check=False)
    if _mounts_under(root):
        raise ImageError(f"{root}: still has mounts; unmount them and remove it by hand")
    shutil.rmtree(root)


def _chroot_apt(root: Path, *args: str) -> None:
    env = {
        "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
        "DEBIAN_FRONTEND": "noninteractive",
        "LANG": "C.UTF-8",
        "HOME": "/root",
    }
    _run(
        ["chroot", str(root), "apt-get", "-q", *args],
        env=env,
        timeout=900,
        what=f"apt-get {args[-1] if args else ''} in the rootfs",
    )


def _configure_rootfs(root: Path) -> None:
    """Point apt at bookworm(-updates,-security), apply updates, slim the tree."""
    (root / "etc/dpkg/dpkg.cfg.d/01-virtwire-slim").write_text(DPKG_EXCLUDES)
    (root / "etc/apt/sources.list").write_text(
        f"deb {MIRROR} {SUITE} main\n"
        f"deb {MIRROR} {SUITE}-updates main\n"
        f"deb {SECURITY_MIRROR} {SUITE}-security main\n"
    )
    # No daemons may start inside the chroot while packages upgrade.
    policy = root / "usr/sbin/policy-rc.d"
    policy.write_text("#!/bin/sh\nexit 101\n")
    policy.chmod(0o755)
    try:
        _chroot_apt(root, "update")
        _chroot_apt(root, "-y", "-o", "Dpkg::Options::=--force-confold", "upgrade")
    except ImageError as exc:
        # The base is still usable; say so loudly rather than fail the build.
        log(f"warning: could not apply bookworm-updates/-security to the base: {exc}")
    finally:
        policy.unlink()
    with contextlib.suppress(ImageError):
        _chroot_apt(root, "clean")
    # What dpkg's excludes do for future installs, done now for what is installed.
    doc = root / "usr/share/doc"
    if doc.is_dir():
        for entry in doc.iterdir():
            if entry.is_dir() and not entry.is_symlink():
                for item in entry.iterdir():
                    if item.name != "copyright":
                        _rm(item)
            elif entry.name != "copyright":
                _rm(entry)
    for rel in ("usr/share/man", "usr/share/info", "usr/share/lintian", "var/lib/apt/lists",
                "var/cache/apt", "var/cache/debconf", "var/log"):
        path = root / rel
        if path.is_dir():
            for item in path.iterdir():
                if item.name not in {"partial", "lock"}:
                    _rm(item)
    locale = root / "usr/share/locale"
    if locale.is_dir():
        for item in locale.iterdir():
            if item.name != "locale.alias":
                _rm(item)
    # The host's name and resolver must not end up in the image (docker supplies both).
    for rel in ("etc/hostname", "etc/resolv.conf"):
        path = root / rel
        if path.exists() or path.is_symlink():
            path.unlink()
            path.write_text("")


def _rm(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def create_base_tarball(dest: Path) -> None:
    """debootstrap a bookworm minbase rootfs and tar it to dest (root only)."""
    if not _is_root():
        raise ImageError("creating the base image runs debootstrap, which needs root")
    debootstrap = shutil.which("debootstrap")
    if debootstrap is None:
        raise ImageError("debootstrap is not installed: apt-get install -y debootstrap")
    dest.parent.mkdir(parents=True, exist_ok=True)
    root = dest.parent / "rootfs.tmp"
    _remove_rootfs(root)
    try:
        with _step(f"debootstrap {SUITE} minbase + {','.join(BASE_PACKAGES)}"):
            _run(
                [
                    debootstrap,
                    "--variant=minbase",
                    f"--include={','.join(BASE_PACKAGES)}",
                    SUITE,
                    root,
                    MIRROR,
                ],
                timeout=1200,
                what="debootstrap",
            )
        with _step("updating and slimming the rootfs"):
            _configure_rootfs(root)
        with _step(f"tar of the rootfs to {dest}"):
            partial = dest.with_suffix(".partial")
            _run(["tar", "--numeric-owner", "-C", root, "-cf", partial, "."], what="tar")
            partial.replace(dest)
    finally:
        _remove_rootfs(root)


def ensure_base_image(name: str = DEFAULT_BASE, *, rebuild: bool = False) -> str:
    """Makes sure the local debootstrap base image exists; returns its name.

    Skipped when the image exists and was made by the current recipe; imported from
    the cached tarball when only the image is missing; debootstrapped otherwise.
    """
    ensure_dockerd()
    recipe = base_recipe()
    with _locked("base"):
        if not rebuild and image_label(name, LABEL_BASE_RECIPE) == recipe:
            return name
        tarball = base_tarball()
        if rebuild or not tarball.exists():
            create_base_tarball(tarball)
        with _step(f"docker import {tarball.name} as {name}"):
            docker(
                "import",
                "--change", f"LABEL {LABEL_BASE_RECIPE}={recipe}",
                "--change", "ENV LANG=C.UTF-8",
                "--change",
                "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                "--change", 'CMD ["python3"]',
                "--message", f"Debian {SUITE} minbase + {' '.join(BASE_PACKAGES)} (debootstrap)",
                str(tarball),
                name,
                timeout=900,
            )  # fmt: skip
        # Tarballs of older recipes are dead weight.
        for old in CACHE_DIR.glob(f"virtwire-base-{SUITE}-*.tar"):
            if old != tarball:
                old.unlink(missing_ok=True)
    return name


# --- 3. the wheels ------------------------------------------------------------


@dataclass(frozen=True)
class Interpreter:
    """The base image's Python, which the wheels must fit."""

    python: str  # "3.11"
    implementation: str  # "cpython"
    machine: str  # "x86_64"
    libc: str  # "glibc" or "" (musl)
    libc_version: str  # "2.36"

    def pip_target_args(self) -> list[str]:
        """pip download's --python-version/--abi/--platform for this interpreter."""
        if self.implementation != "cpython":
            raise ImageError(f"the base image's Python is {self.implementation}, not CPython")
        major, minor = self.python.split(".")
        args = ["--python-version", self.python, "--implementation", "cp",
                "--abi", f"cp{major}{minor}"]  # fmt: skip
        for platform in self.platforms():
            args += ["--platform", platform]
        return args

    def platforms(self) -> list[str]:
        arch = self.machine
        if self.libc == "glibc":
            glibc_minor = int(self.libc_version.split(".")[1])
            # manylinux_2_X for every X the image's glibc satisfies; manylinux2014 is
            # 2_17 and pip expands it to manylinux2010 and manylinux1.
            tags = [f"manylinux_2_{m}_{arch}" for m in range(glibc_minor, 16, -1)]
            return [*tags, f"manylinux2014_{arch}"]
        # platform.libc_ver() finds no glibc: assume musl (Alpine), musllinux_1_2 and older.
        return [f"musllinux_1_{m}_{arch}" for m in (2, 1)]


def probe_interpreter(base: str) -> Interpreter:
    """Asks python3 in the base image what it is (cached per image id)."""
    ident = image_id(base)
    cache = CACHE_DIR / "interpreters.json"
    known: dict[str, dict[str, str]] = {}
    with contextlib.suppress(OSError, ValueError):
        known = json.loads(cache.read_text())
    if ident is not None and ident in known:
        return Interpreter(**known[ident])
    out = docker(
        "run", "--rm", "--network", "none", "--entrypoint", "python3", base, "-c", _PROBE,
        timeout=300,
    )  # fmt: skip
    try:
        info = json.loads(out.strip().splitlines()[-1])
        interp = Interpreter(**{k: str(v) for k, v in info.items()})
    except (ValueError, IndexError, TypeError) as exc:
        raise ImageError(f"{base}: unexpected answer from python3: {out!r}") from exc
    ident = ident or image_id(base)
    if ident is not None:
        known[ident] = info
        CACHE_DIR.mkdir(parents=True, exist_ok=True)
        cache.write_text(json.dumps(known, indent=1))
    return interp


def host_python() -> str:
    """The repo's .venv python when there is one (its pip is current), else ours."""
    venv = REPO / ".venv" / "bin" / "python"
    return str(venv) if venv.exists() else sys.executable


def _stage_source(dest: Path) -> Path:
    """A clean copy of what the wheel is built from.

    setuptools builds in-tree through build/lib, where files deleted from the tree
    linger and would be packaged; a copy also keeps build/ and *.egg-info of the
    work tree untouched.
    """
    dest.mkdir(parents=True)
    for name in WHEEL_SOURCES:
        src = REPO / name
        if src.is_dir():
            shutil.copytree(
                src, dest / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info")
            )
        elif src.exists():
            shutil.copy2(src, dest / name)
    return dest


def build_wheels(interp: Interpreter, dest: Path | None = None) -> list[Path]:
    """The project's wheel and binary wheels of its runtime deps for interp, in dest."""
    dest = dest or CONTEXT_DIR / "wheels"
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    python = host_python()
    # A fixed timestamp makes the project's wheel byte-identical when its files are,
    # so an unchanged tree does not rebuild the image.
    env = dict(os.environ, SOURCE_DATE_EPOCH="315532800", PIP_DISABLE_PIP_VERSION_CHECK="1")
    constraints = ["-c", str(CONSTRAINTS)] if CONSTRAINTS.exists() else []
    with tempfile.TemporaryDirectory(prefix="virtwire-src-") as tmp:
        source = _stage_source(Path(tmp) / "src")
        _run(
            [python, "-m", "pip", "wheel", "-q", "--no-deps", "--wheel-dir", dest, source],
            env=env,
            timeout=600,
            what="pip wheel of the project",
        )
    built = sorted(dest.glob("virtwire-*.whl"))
    if len(built) != 1:
        raise ImageError(f"pip wheel left {len(built)} virtwire wheels in {dest}")
    _run(
        [python, "-m", "pip", "download", "-q", "--only-binary=:all:", "--dest", dest,
         *interp.pip_target_args(), *constraints, built[0]],
        env=env,
        timeout=600,
        what=f"pip download of the dependencies for Python {interp.python} {interp.machine}",
    )  # fmt: skip
    return sorted(dest.glob("*.whl"))


# --- 4. the image -------------------------------------------------------------


def _context_hash(base_id: str, wheels: Sequence[Path], version: str) -> str:
    digest = hashlib.sha256()
    digest.update(DOCKERFILE.read_bytes())
    digest.update(f"\0{base_id}\0{version}\0".encode())
    for wheel in sorted(wheels):
        digest.update(wheel.name.encode() + b"\0")
        digest.update(hashlib.sha256(wheel.read_bytes()).digest())
    return digest.hexdigest()[:24]


def build_image(
    base: str | None = None,
    tag: str | None = None,
    *,
    force: bool = False,
    quiet: bool = False,
) -> str:
    """Builds virtwire:<version> (or tag) from base; returns the tag.

    base None or DEFAULT_BASE: the local debootstrap image, created when missing.
    Any other base (e.g. python:3.11-slim) must already be present locally: this
    never pulls. The wheels are made for the base's own python3, whatever it is.
    """
    version = project_version()
    tag = tag or f"virtwire:{version}"
    base = base or DEFAULT_BASE
    start = time.monotonic()
    ensure_dockerd()
    if base == DEFAULT_BASE:
        ensure_base_image(base)
    with _locked("build"):
        base_id = image_id(base)
        if base_id is None:
            # Never pulled from here: this machine reaches no image registry.
            raise ImageError(
                f"base image {base} is not present locally: `docker pull {base}` (or "
                f"`docker load`) it first, or use the default {DEFAULT_BASE}"
            )
        interp = probe_interpreter(base)
        with _step(f"wheels for Python {interp.python} {interp.machine} ({interp.libc or 'musl'})"):
            wheels = build_wheels(interp)
        log("wheels: " + ", ".join(w.name for w in wheels))
        context_hash = _context_hash(base_id, wheels, version)
        old_id = image_id(tag)
        if not force and old_id and image_label(tag, LABEL_CONTEXT) == context_hash:
            log(f"{tag} is up to date ({time.monotonic() - start:.1f}s)")
            return tag
        with _step(f"docker build {tag} (base {base})"):
            docker(
                "build", "--network", "none", "--pull=false",
                "-f", str(DOCKERFILE),
                "--build-arg", f"BASE={base}",
                "--build-arg", f"VERSION={version}",
                "--label", f"{LABEL_CONTEXT}={context_hash}",
                "-t", tag,
                str(CONTEXT_DIR),
                capture=quiet,
                timeout=1800,
            )  # fmt: skip
        new_id = image_id(tag)
        # With vfs every layer is a full copy of the tree: drop the previous build (now
        # untagged) and the venv stage's image (only a cache for an identical rebuild,
        # which the label check above already skips).
        if old_id and old_id != new_id:
            subprocess.run(
                [docker_cli(), "image", "rm", old_id], capture_output=True, check=False
            )
        subprocess.run(
            [docker_cli(), "image", "prune", "--force", "--filter", f"label={LABEL_STAGE}"],
            capture_output=True,
            check=False,
        )
    log(f"built {tag} in {time.monotonic() - start:.1f}s")
    return tag


def image_size(tag: str) -> int:
    """The image's size in bytes, as `docker images` shows it."""
    return int(docker("image", "inspect", "--format", "{{.Size}}", tag).strip())


# --- command line -------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python deploy/image.py", allow_abbrev=False,
        description=__doc__.split("\n\n")[0] if __doc__ else None
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p_build = sub.add_parser("build", allow_abbrev=False,
                             help="build virtwire:<version> (all steps)")
    p_build.add_argument(
        "--base", default=DEFAULT_BASE, help=f"base image (default {DEFAULT_BASE}, made here)"
    )
    p_build.add_argument("--tag", help="image tag (default virtwire:<version of pyproject>)")
    p_build.add_argument("--force", action="store_true", help="docker build even if up to date")
    p_base = sub.add_parser("base", allow_abbrev=False, help=f"only create {DEFAULT_BASE}")
    p_base.add_argument("--rebuild", action="store_true", help="debootstrap again")
    sub.add_parser("dockerd", allow_abbrev=False,
                   help="only make sure a Docker engine answers (start dockerd)")
    sub.add_parser("deps", allow_abbrev=False,
                   help=f"apt-get install {' '.join(HOST_PACKAGES)} when missing")
    args = parser.parse_args(argv)
    try:
        if args.command == "build":
            tag = build_image(args.base, args.tag, force=args.force)
            log(f"{tag}: {image_size(tag) / 1e6:.0f} MB")
            print(tag)
        elif args.command == "base":
            print(ensure_base_image(rebuild=args.rebuild))
        elif args.command == "dockerd":
            ensure_dockerd()
            print(docker("version", "--format", "{{.Server.Version}}").strip())
        elif args.command == "deps":
            install_host_packages()
    except ImageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
