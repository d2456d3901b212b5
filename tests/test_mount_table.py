"""The mount table is parsed once and again only after the kernel reports a change: a
process sees every mount and unmount (its own or another process's) at its next look,
and reads /proc/self/mountinfo no more often than that."""

from helpers import run_with_private_mounts
from hugepage_fixtures import require_root


def test_mounts_and_unmounts_are_seen_at_once_and_nothing_is_reread_between():
    require_root()
    result = run_with_private_mounts("mkdir -p /mnt/mshare-mount-table", """
        import subprocess, sys
        from mshare import machine

        point = "/mnt/mshare-mount-table"
        reads = []
        sys.addaudithook(lambda event, args: reads.append(args[0])
                         if event == "open" and args[0] == "/proc/self/mountinfo" else None)

        assert machine.mount_at(point) is None
        machine.mounts()
        machine.mounts()
        unchanged = len(reads)
        # Another process changes the table; this one learns of it at its next look.
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "none", point], check=True)
        mounted = machine.mount_at(point)
        subprocess.run(["umount", point], check=True)
        unmounted = machine.mount_at(point)
        print(unchanged, len(reads), mounted is not None and mounted.fstype, unmounted)
    """)
    unchanged, reads, mounted, unmounted = result.stdout.split()
    assert unchanged == "1"  # three looks, one read
    assert reads == "3"  # one more read per change
    assert mounted == "tmpfs" and unmounted == "None"


def test_a_forked_child_sees_changes_after_the_fork():
    require_root()
    result = run_with_private_mounts("mkdir -p /mnt/mshare-fork-table", """
        import os, subprocess
        from mshare import machine

        point = "/mnt/mshare-fork-table"
        assert machine.mount_at(point) is None  # the parent's table, read before the fork
        pid = os.fork()
        if pid == 0:
            subprocess.run(["mount", "-t", "tmpfs", "none", point], check=True)
            seen = machine.mount_at(point) is not None
            subprocess.run(["umount", point], check=True)
            os._exit(0 if seen and machine.mount_at(point) is None else 1)
        _, status = os.waitpid(pid, 0)
        print(os.waitstatus_to_exitcode(status), machine.mount_at(point))
    """)
    assert result.stdout.split() == ["0", "None"]


def test_a_process_that_moves_to_another_mount_namespace_sees_that_namespace():
    """The open mountinfo reports changes of the namespace it was opened in only: a process
    that unshares its namespace and unmounts there must see the unmount at its next look."""
    require_root()
    result = run_with_private_mounts(
        "mkdir -p /mnt/mshare-ns-table && mount -t tmpfs none /mnt/mshare-ns-table", """
        import ctypes, os, subprocess
        from mshare import machine

        point = "/mnt/mshare-ns-table"
        before = machine.mount_at(point)
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.unshare(0x00020000) != 0:  # CLONE_NEWNS
            raise OSError(ctypes.get_errno(), "unshare")
        subprocess.run(["mount", "--make-rprivate", "/"], check=True)
        subprocess.run(["umount", point], check=True)  # in the new namespace only
        print(before is not None and before.fstype, machine.mount_at(point))
    """)
    assert result.stdout.split() == ["tmpfs", "None"]
