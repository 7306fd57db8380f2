"""
The files a gateway reads or opens again after twistd dropped privileges
(C{twistd -u USER -g GROUP}), and who must own them.

Started as root, the gateway binds its ports and opens its files first,
then runs as USER: a SIGHUP re-reads the configuration file, the admin token
file and the PEM folders of C{tls:} fronts, and reopens the access log (which
is how log rotation works), all as USER.  L{TokenFiles} remembers each admin
token file read at start, so that a reload that cannot read it as USER keeps
its token while the file has not changed (and says what ownership is needed
once it has).  L{ownership_lines} is what C{--check-config} prints about it.
"""

from __future__ import annotations

import grp
import os
import pwd
from collections.abc import Callable

from gateway.checks import ConfigError, read_token_file
from gateway.config import GatewayConfig

__all__ = ["TokenFiles", "ownership_lines", "user_name"]


def user_name(uid: int | None = None) -> str:
    """
    The name of user C{uid} (this process's effective user by default), or its number.
    """
    uid = os.geteuid() if uid is None else uid
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def _group_name(gid: int) -> str:
    """
    The name of group C{gid}, or its number.
    """
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


def _identity(path: str) -> tuple[int, ...] | None:
    """
    What tells one version of a file from another without reading it (a
    file's metadata can be read by a user who cannot read the file).
    """
    try:
        info = os.stat(path)
    except OSError:
        return None
    return (info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns)


class TokenFiles:
    """
    The admin token files read so far, each with its token and the identity
    of the version read.
    """

    def __init__(self) -> None:
        self._read: dict[str, tuple[tuple[int, ...] | None, str]] = {}

    def paths(self) -> list[str]:
        """
        The files read, as absolute paths.
        """
        return list(self._read)

    def read(
        self, option: str, path: str, *, reader: Callable[[str, str], str] = read_token_file
    ) -> str:
        """
        Read the token in C{path}; if this process may not read it any more
        (it dropped privileges), the token read before while the file is
        the same.

        @param reader: reads and checks the file (the cluster's password
            file has a reader of its own).

        @raise ConfigError: the file cannot be read (and changed, or was
            never read), or its token is not valid.
        """
        absolute = os.path.abspath(path)
        try:
            token = reader(option, path)
        except ConfigError:
            known = self._read.get(absolute)
            if os.path.exists(absolute) and not os.access(absolute, os.R_OK):
                if known is not None and known[0] == _identity(absolute):
                    return known[1]
                user, group = user_name(), _group_name(os.getegid())
                changed = "it changed since it was read, so " if known else ""
                raise ConfigError(
                    f"{option}: cannot read {path!r} as user {user}: {changed}make it readable "
                    f"by {user} (e.g. chgrp {group} {absolute}; chmod 0640 {absolute})"
                ) from None
            raise
        self._read[absolute] = (_identity(absolute), token)
        return token


def _may(path: str, uid: int, gids: set[int], want: int) -> bool:
    """
    Whether user C{uid} (with groups C{gids}) may C{want} (C{os.R_OK},
    C{os.W_OK}, C{os.X_OK}) C{path}, from its mode bits (ACLs aside), and
    search every folder above it.
    """
    if uid == 0:
        return True
    shifts = {os.R_OK: 2, os.W_OK: 1, os.X_OK: 0}
    parts = os.path.abspath(path).split(os.sep)
    checks = [(os.sep.join(parts[:i]) or os.sep, os.X_OK) for i in range(1, len(parts))]
    for target, bit in [*checks, (path, want)]:
        try:
            info = os.stat(target)
        except OSError:
            return False
        if info.st_uid == uid:
            shift = 6
        elif info.st_gid in gids:
            shift = 3
        else:
            shift = 0
        if not (info.st_mode >> shift) & (1 << shifts[bit]):
            return False
    return True


def ownership_lines(
    config: GatewayConfig, uid: int, gid: int, token_files: list[str]
) -> list[str]:
    """
    What C{--check-config} says about the files a reload reads or opens as
    user C{uid} (after C{twistd -u}): one line per file, saying whether that
    user may, and what is needed if not.

    @param token_files: the admin token files read (L{TokenFiles.paths}).
    """
    user = user_name(uid)
    try:
        gids = set(os.getgrouplist(user, gid))
    except (KeyError, OSError):
        gids = {gid}
    group = _group_name(gid)
    lines = [f"after the privilege drop, a reload runs as user {user} (group {group}):"]
    may: Callable[[str, int], bool] = lambda path, want: _may(path, uid, gids, want)  # noqa: E731
    if config.config_file is not None:
        ok = may(config.config_file, os.R_OK)
        lines.append(
            f"  config {config.config_file}: "
            + ("readable" if ok else f"NOT readable by {user}: every reload would be refused")
        )
    for token_file in token_files:
        ok = may(token_file, os.R_OK)
        secret = "password" if token_file == config.cluster_password_file else "token"
        kind = "cluster-password-file" if secret == "password" else "admin-token-file"
        lines.append(
            f"  {kind} {token_file}: "
            + (
                "readable"
                if ok
                else f"read at start only: a reload keeps its {secret} until the file changes; "
                f"make it readable by {user} to change the {secret} with a reload"
            )
        )
    if config.access_log is not None and config.access_log != "-":
        folder = os.path.dirname(config.access_log)
        ok = may(folder, os.W_OK) and may(folder, os.X_OK)
        lines.append(
            f"  access-log {config.access_log}: "
            + (
                f"its folder is writable: reopened after rotation as {user}"
                if ok
                else f"opened at start only: after a rotation it cannot be reopened "
                f"(make {folder} writable by {user}, or use logrotate's copytruncate)"
            )
        )
    if config.http_root is not None:
        ok = may(config.http_root, os.R_OK) and may(config.http_root, os.X_OK)
        lines.append(
            f"  http-root {config.http_root}: "
            + ("readable" if ok else f"NOT readable by {user}: every file would be refused")
        )
    return lines
