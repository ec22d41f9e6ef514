"""Running a command as an ordinary user would, for tests of permission errors. CI runs the
suite as root, and root writes through any mode bits by the CAP_DAC_OVERRIDE capability
(CAP_DAC_READ_SEARCH: reads and searches), so such a test runs its command without them."""

from __future__ import annotations

import os

_DROP_FILE_MODE_CAPS = "-dac_override,-dac_read_search"


def without_file_mode_override() -> list[str]:
    """The prefix of a command line that runs it bound by file modes; empty unless root.

    Dropped from the bounding set, root's exec cannot regain the capabilities; dropped from
    the inheritable set too (which also clears them from the ambient set), none of them
    survives an exec where the container started us with them inheritable."""
    if os.geteuid() != 0:
        return []
    return ["setpriv", f"--inh-caps={_DROP_FILE_MODE_CAPS}",
            f"--bounding-set={_DROP_FILE_MODE_CAPS}"]
