"""Container hardening shared by every place Conveyor starts a container.

Step containers (worker/executors/docker.py) and deployed instances
(deploy/providers/docker.py) drop the same capabilities, so this lives below both.
"""
from __future__ import annotations

# Docker's default set minus what a build step has no business with: raw sockets (ARP/ICMP
# spoofing on the bridge), device nodes, chroot, file capabilities, capability-set changes
# and the kernel audit log. CHOWN, DAC_OVERRIDE, FOWNER, FSETID, SETUID, SETGID, KILL and
# NET_BIND_SERVICE stay: package managers (apt drops to the _apt user), tests that bind
# port 80, and `chown` in build scripts need them.
DEFAULT_CAP_DROP: tuple[str, ...] = (
    "NET_RAW",
    "MKNOD",
    "SYS_CHROOT",
    "SETFCAP",
    "SETPCAP",
    "AUDIT_WRITE",
)
