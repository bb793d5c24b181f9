"""Runs on devices over the user's own OpenSSH (docs/architecture.md): copy the bundle to a fresh remote directory,
run there, stream progress back, bring the report into ``reports/<host>/``, remove the remote directory (also on
failure and Ctrl-C).

- ``options``: the SSH options every remote command takes, as one ``SshOptions`` (light: the CLI imports it).
- ``transport``: ssh, the tar stream, connection errors, the remote directory, Ctrl-C.
- ``protocol``: what runs a request on the device (edgeconv there, or the bundle's runner) and which request protocol
  it reads; the device's answer read back.
- ``jobs``: one short function per command (validate, profile, build): what to send, what to run, what to bring back.
- ``cross``: the same request run on this machine, and its outputs against the device's.
- ``run``: ``run_remote``, every device in parallel.
"""

from edgeconv.remote.options import SshOptions, read_hosts

__all__ = ["SshOptions", "read_hosts"]
