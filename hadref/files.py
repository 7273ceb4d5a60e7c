"""The files a command writes: atomic writes, their stale temporary files, and the rules
that keep a command from losing a file.

Every file hadref writes (a model, a checkpoint) goes through :func:`atomic_file`: the
content is written to ``.NAME.hadref-PID-RANDOM.tmp`` beside ``NAME`` and renamed into
place, so a crash leaves the previous file intact. A process killed mid-write leaves its
temporary file behind; :func:`remove_stale_temps` (run by every job before it writes)
removes those of one output, recognised by that name pattern and a process id that is no
longer running.

:func:`check_distinct` and :func:`claim_outputs` are the rules every writing command
applies before any work:

* the output, the log, the checkpoint and every input are distinct files (resolved paths:
  ``./``, ``..`` and symlinks; hard links through ``os.path.samefile``);
* an existing output is replaced only with ``overwrite`` (``--overwrite``) or ``resume``
  (``--resume`` of the run that wrote it);
* a missing output folder is created; a folder that cannot be written is an error naming it.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import tempfile
from pathlib import Path

from hadref.errors import HadrefError

_TEMP = re.compile(r"\.hadref-(\d+)-[0-9a-f]+\.tmp")
# temporary names of hadref before this module (kept one release so that their leftovers
# are removed too): models ".NAME.XXXXXXXX.tmp" (tempfile.mkstemp), checkpoints
# ".NAME.tmp-PID"
_LEGACY = (re.compile(r"\.[a-z0-9_]{8}\.tmp"), re.compile(r"\.tmp-(\d+)"))


def temp_path(path) -> Path:
    """The temporary file :func:`atomic_file` writes ``path`` through (this process)."""
    path = Path(path)
    return path.with_name(f".{path.name}.hadref-{os.getpid()}-{secrets.token_hex(4)}.tmp")


@contextlib.contextmanager
def atomic_file(path):
    """``with atomic_file(path) as tmp:`` write ``tmp``; on success it is renamed to
    ``path`` (normal permissions, umask applied), on any exception it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(path)
    try:
        yield tmp
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return False   # this process writes nothing while it cleans up
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True    # exists under another user (or cannot tell): keep its file
    return True


def stale_temps(path) -> list[Path]:
    """Temporary files of interrupted atomic writes of ``path`` (by hadref's name pattern,
    written by a process that no longer runs)."""
    path = Path(path)
    folder = path.parent
    if not folder.is_dir():
        return []
    prefix = f".{path.name}"
    found = []
    for entry in folder.iterdir():
        name = entry.name
        if not name.startswith(prefix) or not entry.is_file():
            continue
        rest = name[len(prefix):]
        m = _TEMP.fullmatch(rest)
        if m is not None:
            if not _alive(int(m.group(1))):
                found.append(entry)
            continue
        if _LEGACY[0].fullmatch(rest):
            found.append(entry)
            continue
        m = _LEGACY[1].fullmatch(rest)
        if m is not None and not _alive(int(m.group(1))):
            found.append(entry)
    return sorted(found)


def remove_stale_temps(*paths) -> list[tuple[Path, int]]:
    """Remove :func:`stale_temps` of each path; returns [(removed file, its size in bytes)]."""
    removed = []
    for path in paths:
        for tmp in stale_temps(path):
            try:
                size = tmp.stat().st_size
                tmp.unlink()
            except FileNotFoundError:
                continue
            except OSError as err:
                raise HadrefError(f"cannot remove the stale temporary file {tmp}: "
                                  f"{err.strerror}") from None
            removed.append((tmp, size))
    return removed


def same_file(a, b) -> bool:
    """True when paths ``a`` and ``b`` name one file: equal after resolving ``./``, ``..``
    and symlinks, or hard links to one inode (both existing)."""
    if os.path.realpath(a) == os.path.realpath(b):
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def check_distinct(inputs: dict, outputs: dict) -> None:
    """Raise HadrefError when an output is an input or another output.

    inputs, outputs: {how the user names it (an option such as ``-o``, or an argument such
    as ``TEACHER.h5``): path}; None paths are left out.
    """
    outs = [(k, Path(v)) for k, v in outputs.items() if v is not None]
    ins = [(k, Path(v)) for k, v in inputs.items() if v is not None]
    for i, (name, path) in enumerate(outs):
        for other, other_path in ins:
            if same_file(path, other_path):
                raise HadrefError(f"{name} and {other} are the same file ({path}): a command "
                                  f"never writes over its input; choose another {name}")
        for other, other_path in outs[:i]:
            if same_file(path, other_path):
                raise HadrefError(f"{other} and {name} are the same file ({path}): every file "
                                  f"a run writes needs its own name; choose another {name}")


def claim_outputs(outputs: dict, *, overwrite: bool = False, resume: bool = False) -> None:
    """Check that the files of ``outputs`` ({option: path}) may be written, before any work.

    An existing file is an error unless ``overwrite`` or ``resume`` (a resumed run appends
    to its log, continues its checkpoint and replaces its own output). A missing folder is
    created; a path that names a folder, or a folder that cannot be written, is an error.
    """
    for name, path in outputs.items():
        if path is None:
            continue
        path = Path(path)
        if path.is_dir():
            raise HadrefError(f"{name} {path}: is a folder, expected a file name")
        if path.exists() and not (overwrite or resume):
            if name.endswith("--checkpoint"):
                how = "pass --resume to continue its run, or --overwrite to start again"
            elif name.endswith("--log"):
                how = "pass --overwrite to replace it (--resume appends to it)"
            else:   # the option to change: "-o" of "fine-tuned teacher -o" too
                how = f"pass --overwrite to replace it, or choose another {name.split()[-1]}"
            raise HadrefError(f"{name} {path}: file exists; {how}")
    for name, path in outputs.items():
        if path is not None:
            ensure_folder(Path(path).parent, name)


def ensure_folder(folder, option: str) -> Path:
    """Create ``folder`` when missing and check that a file can be created in it."""
    folder = Path(folder)
    probe_at = folder if str(folder) else Path(".")
    try:
        probe_at.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise HadrefError(f"{option}: {folder} is not a folder") from None
    except OSError as err:
        raise HadrefError(f"{option}: cannot create the folder {folder}: {err.strerror}") from None
    try:
        fd, probe = tempfile.mkstemp(prefix=".hadref-probe-", dir=probe_at)
    except OSError as err:
        raise HadrefError(f"{option}: cannot write in the folder {probe_at}: {err.strerror}") from None
    os.close(fd)
    os.unlink(probe)
    return folder


def read_json_file(path, what: str, prefix: str = ""):
    """The JSON value in ``path``; a one-line HadrefError when it cannot be read or is not
    JSON. what: what the file should be, for the message ("`hadref passkey --json`
    output"); prefix: the option that named it ("--json ")."""
    import json

    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except OSError as err:
        raise HadrefError(f"{prefix}{path}: cannot read it ({err.strerror})") from None
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise HadrefError(f"{prefix}{path}: not JSON (expected {what})") from None


def write_figure(fig, out) -> Path:
    """Save a matplotlib figure to ``out`` (.png, .svg or .pdf: the format is the suffix)
    atomically; returns the path."""
    out = Path(out)
    with atomic_file(out) as tmp:
        fig.savefig(tmp, dpi=120, format=out.suffix.lstrip("."))
    return out


__all__ = ["atomic_file", "read_json_file", "write_figure", "check_distinct", "claim_outputs",
           "ensure_folder", "remove_stale_temps", "same_file", "stale_temps", "temp_path"]
