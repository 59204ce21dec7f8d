"""How often the kernel side wakes the agent: by bytes a CPU wrote, a share of the ring."""

from spanprobe.loader import MIN_WAKEUP_BYTES, wakeup_bytes


def test_every_cpu_just_short_of_waking_fills_a_quarter_of_the_ring_at_most():
    ring = 1024 * 4096
    assert wakeup_bytes(1024, 2) == 512 * 1024          # the default ring, this machine
    for cpus in (1, 2, 3, 8, 64, 256):
        each = wakeup_bytes(1024, cpus)
        assert each * cpus <= ring // 4 or each == MIN_WAKEUP_BYTES


def test_many_cpus_still_batch_a_few_records():
    """A small ring on a large host: at least MIN_WAKEUP_BYTES (a handful of records), not a
    wake-up per record; and a CPU count the system could not tell counts as one."""
    assert wakeup_bytes(8, 512) == MIN_WAKEUP_BYTES
    assert wakeup_bytes(1024, 0) == wakeup_bytes(1024, 1) == 1024 * 1024
