"""The agent's error hierarchy: each says what went wrong and how to fix it, on one line.

The command line turns any SpanprobeError into `spanprobe: <message>` and its exit code.
"""


class SpanprobeError(Exception):
    """Base class. `exit_code` is what the command line exits with."""

    exit_code = 1


class ConfigError(SpanprobeError):
    """Bad configuration: an unknown key, a wrong type, a bad value."""

    exit_code = 2


class KernelUnsupported(SpanprobeError):
    """The running kernel lacks something the agent cannot do without."""

    exit_code = 3


class ProbeAttachError(SpanprobeError):
    """A required probe could not be compiled, loaded or attached."""

    exit_code = 4


class PermissionProblem(SpanprobeError):
    """Missing privileges (root or CAP_BPF/CAP_PERFMON/...)."""

    exit_code = 5
