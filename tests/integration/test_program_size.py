"""The kernel side's size, per strategy, as this host's bcc compiles it (nothing is loaded).

Compile and verify time follow the instruction count, and under the kernel matrix's and the
appliance's emulated CPUs every agent start pays them: fentry's eleven exit programs, each
carrying the whole exit path, were 30k of its 36k instructions and two minutes of start-up
in a Debian 13 guest. Each exit now holds only its syscall's operations, and the
tracepoint and kprobe strategies share one enter and one exit program across syscalls;
these bounds keep it so (with room for LLVM versions), since nothing else would notice a
change that made every start slow again."""

from __future__ import annotations

import pytest

from spanprobe import config, kernel, loader, probes
from spanprobe.procfs import SysRoot

# instructions: (whole text, largest exit program)
BOUNDS = {"fentry": (16_000, 1_500), "tracepoint": (7_500, 3_000)}


def compiled_sizes(strategy: str) -> dict[str, int]:
    """{program: instructions} of the agent's text compiled for `strategy` on this host."""
    bcc = loader.import_bcc()

    class CompileOnly(bcc.BPF):
        def _trace_autoload(self):      # bcc loads and attaches fentry programs here: not wanted
            pass

    settings = config.resolve({}, {})
    feats = kernel.detect(SysRoot("/"), probes.SYSCALLS, probes.TRACEPOINTS)
    feats.fentry_unreadable = {}        # compile every syscall's pair, as a kernel with full BTF would
    plan = probes.make_plan(feats, strategy, settings, settings["buffer"])
    flags = loader.cflags(plan, settings, feats, 1, False)
    b = CompileOnly(src_file=str(loader.bpf_dir() / "spanprobe.bpf.c").encode(), cflags=flags)
    try:
        lib = bcc.lib
        names = [lib.bpf_function_name(b.module, i) for i in range(lib.bpf_num_functions(b.module))]
        return {n.decode(): lib.bpf_function_size(b.module, n) // 8 for n in names}
    finally:
        loader.release_bpf(b)


@pytest.mark.parametrize("strategy", sorted(BOUNDS))
def test_programs_stay_small(strategy):
    sizes = compiled_sizes(strategy)
    total_max, exit_max = BOUNDS[strategy]
    exits = {n: s for n, s in sizes.items() if n.startswith("kretfunc__") or n == "sp_exit"}
    assert exits, f"no exit program compiled for {strategy}: {sorted(sizes)}"
    assert sum(sizes.values()) <= total_max, (strategy, sum(sizes.values()), sizes)
    big = {n: s for n, s in exits.items() if s > exit_max}
    assert not big, f"{strategy} exit programs over {exit_max} instructions: {big}"
    if strategy == "fentry":
        # a write's exit only reports the write's result: none of the read path may be left in it
        writes = [s for n, s in exits.items() if n.endswith(("sys_write", "sys_sendto"))]
        assert writes and max(writes) < 200, exits
