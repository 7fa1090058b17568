"""The orchestrator: runs a LAN from a topology file.

- ``core``: ``Orchestrator`` (up, down, restarts) and the LAN's state file;
- ``plan``: what each service is started with (pure), the ``spec`` types;
- ``runtime``: where services run (process, docker, remote); ``agent``:
  another host's side of ``remote``; ``launch``: child processes and their
  ready files;
- ``render``: compose files and Kubernetes manifests from the same plan;
- ``subnet``, ``health``, ``pki``, ``statedir``, ``pids``, ``start_options``.
"""
