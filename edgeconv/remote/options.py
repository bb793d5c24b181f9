"""The SSH options of every command that runs on devices (``--remote``, ``--hosts``, ``--identity``, ...), as one
value: the CLI declares them once and hands each command one ``SshOptions``; and a ``RemoteRequest``, the command to
run on the devices. Light: ``edgeconv --help`` imports it."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgeconv.errors import BadInput


@dataclass
class SshOptions:
    """Which devices (``remotes``, and the ``hosts`` file's), how ssh reaches them, and the Python that runs there."""

    remotes: list[str] = field(default_factory=list)  # user@host[:port]
    hosts: Path | None = None  # a file with one user@host[:port] per line
    identity: Path | None = None  # an SSH private key (else the user's ssh config and agent)
    ssh_options: list[str] = field(default_factory=list)  # each passed to ssh as -o OPTION
    remote_python: str = "python3"
    timeout: float = 30.0  # seconds, to connect and for each short command

    @property
    def given(self) -> bool:
        """Whether the command runs on devices (a --remote or a --hosts file was given)."""
        return bool(self.remotes or self.hosts)

    def devices(self) -> list[str]:
        """--remote values, then the --hosts file's."""
        return list(self.remotes) + (read_hosts(self.hosts) if self.hosts else [])


def read_hosts(path: Path) -> list[str]:
    if not path.is_file():
        raise BadInput(f"--hosts file {path} does not exist")
    return [line.split("#")[0].strip() for line in path.read_text().splitlines() if line.split("#")[0].strip()]


@dataclass
class RemoteRequest:
    """A command to run on devices: the bundle, the devices, how to reach them, and what the command needs there."""

    bundle: Path
    remotes: list[str]
    ssh: SshOptions = field(default_factory=SshOptions)
    command: str = "validate"  # validate, profile (a request each); build (needs edgeconv on the device)
    request: dict[str, Any] | None = None  # validate/profile: the request, executed on the device as it is here
    run_timeout: float = 1800.0
    args: list[str] = field(default_factory=list)  # build's own options, passed through
