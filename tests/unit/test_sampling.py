"""Issue 17, item 4: head sampling with the SDK's own samplers, from OTEL_TRACES_SAMPLER /
OTEL_TRACES_SAMPLER_ARG or the config file, decided at the request head."""

from __future__ import annotations

import random

import pytest
from opentelemetry.sdk.trace import sampling as sdk

from spanprobe import config
from spanprobe.sampling import SAMPLED, HeadSampler
from test_streams import TRACEPARENT, Sim, req, resp, server

PARENT = 0x00F067AA0BA902B7


@pytest.mark.parametrize("name, parent_flags, want", [
    ("parentbased_always_on", None, 1), ("parentbased_always_on", 0x01, 1), ("parentbased_always_on", 0x00, 0),
    ("parentbased_always_off", None, 0), ("parentbased_always_off", 0x01, 1), ("parentbased_always_off", 0x00, 0),
    ("always_on", 0x00, 1), ("always_off", 0x01, 0), ("always_on", None, 1),
])
def test_static_and_parent_based_decisions(name, parent_flags, want):
    s = HeadSampler(name)
    trace_id = random.getrandbits(128) | 1
    if parent_flags is None:
        assert s(trace_id, None, SAMPLED, False) & SAMPLED == want
    else:
        for remote in (True, False):
            assert s(trace_id, PARENT, parent_flags, remote) & SAMPLED == want


def test_the_other_trace_flag_bits_ride_along():
    assert HeadSampler("parentbased_always_on")(1 << 100, PARENT, 0x03, True) == 0x03
    assert HeadSampler("always_off")(1 << 100, PARENT, 0x03, True) == 0x02


def test_a_ratio_decision_is_the_sdks_function_of_the_trace_id():
    rng = random.Random(7)
    ids = [rng.getrandbits(128) for _ in range(20000)]
    ours, again = HeadSampler("traceidratio", 0.25), HeadSampler("traceidratio", 0.25)
    theirs = sdk.TraceIdRatioBased(0.25)
    kept = [t for t in ids if ours(t, None, SAMPLED, False) & SAMPLED]
    assert kept == [t for t in ids if again(t, None, SAMPLED, False) & SAMPLED]     # every process alike
    assert kept == [t for t in ids if theirs.should_sample(None, t, "").decision.is_sampled()]
    assert abs(len(kept) / len(ids) - 0.25) < 0.02


def test_parent_based_ratio_follows_the_parent_and_samples_roots_by_ratio():
    s = HeadSampler("parentbased_traceidratio", 0.0)
    assert s(12345, None, SAMPLED, False) & SAMPLED == 0
    assert s(12345, PARENT, 0x01, True) & SAMPLED == 1


def test_the_assembler_decides_at_the_request_head_and_children_inherit():
    sim = Sim()
    sim.asm.sample = HeadSampler("parentbased_always_on")
    server(sim)
    sim.read(10, req(headers={"traceparent": TRACEPARENT[:-2] + "00"}))
    [x] = sim.asm.conns[(100, 5)].inflight
    assert x.trace_flags & SAMPLED == 0          # decided before the response is seen
    sim.write(20, resp())
    [x] = sim.drain()
    assert x.trace_flags & SAMPLED == 0


# ---- settings: OTEL_TRACES_SAMPLER[_ARG], the file, clear errors

def resolve(env=None, flags=None):
    return config.resolve(flags or {}, env=env or {})


def test_the_default_is_parent_based_always_on():
    s = resolve()
    assert (s["sampling.sampler"], s["sampling.ratio"]) == ("parentbased_always_on", 1.0)


def test_the_standard_variables_choose_sampler_and_ratio():
    s = resolve({"OTEL_TRACES_SAMPLER": "parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0.1"})
    assert (s["sampling.sampler"], s["sampling.ratio"]) == ("parentbased_traceidratio", 0.1)
    assert s.source["sampling.ratio"] == "environment OTEL_TRACES_SAMPLER_ARG"


def test_an_arg_for_another_sampler_is_no_error():
    s = resolve({"OTEL_TRACES_SAMPLER": "always_on", "OTEL_TRACES_SAMPLER_ARG": "endpoint=http://x"})
    assert s["sampling.ratio"] == 1.0


@pytest.mark.parametrize("env, needle", [
    ({"OTEL_TRACES_SAMPLER": "jaeger_remote"}, "sampling.sampler: 'jaeger_remote'"),
    ({"OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "half"}, "OTEL_TRACES_SAMPLER_ARG"),
    ({"OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "1.5"}, "1.5 is outside"),
    ({"SPANPROBE_SAMPLING_RATIO": "nan"}, "sampling.ratio"),
])
def test_bad_sampler_settings_are_one_clear_error(env, needle):
    # the SDK falls back to a ratio of 1.0 on a bad argument; the agent says so instead
    with pytest.raises(config.ConfigError, match=".*") as exc:
        resolve(env)
    assert needle in str(exc.value) and "\n" not in str(exc.value)


def test_spanprobe_variables_and_the_file_order_as_for_every_key(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("sampling:\n  sampler: traceidratio\n  ratio: 0.5\n")
    s = config.resolve({}, env={"OTEL_TRACES_SAMPLER": "always_off"}, file=f)
    assert s["sampling.sampler"] == "always_off"                 # environment > file
    s = config.resolve({}, env={"SPANPROBE_SAMPLING_SAMPLER": "always_on",
                                "OTEL_TRACES_SAMPLER": "always_off"}, file=f)
    assert s["sampling.sampler"] == "always_on"
    s = config.resolve({}, env={}, file=f)
    assert (s["sampling.sampler"], s["sampling.ratio"]) == ("traceidratio", 0.5)


@pytest.mark.parametrize("name", sorted(__import__("spanprobe.sampling", fromlist=["SAMPLERS"]).SAMPLERS))
def test_every_answer_is_what_the_sdk_sampler_says_when_asked_each_time(name):
    # the reused answers (HeadSampler.by_parent, root_answer) against the SDK asked per call
    rng = random.Random(name)
    s = HeadSampler(name, 0.37)
    for _ in range(3000):
        trace_id = rng.getrandbits(128) or 1
        parent = rng.choice([None, rng.getrandbits(64) or 1])
        flags, remote = rng.choice([0, 1, 2, 3]), rng.choice([False, True])
        want = s.ask(trace_id, parent, flags if parent else SAMPLED, remote)
        got = s(trace_id, parent, flags if parent else SAMPLED, remote)
        assert bool(got & SAMPLED) == want, (trace_id, parent, flags, remote)
        assert got & ~SAMPLED == (flags if parent else SAMPLED) & ~SAMPLED


@pytest.mark.parametrize("name, ratio, skipped", [
    ("parentbased_always_on", 1.0, True), ("always_on", 1.0, False), ("always_off", 1.0, False),
    ("parentbased_always_off", 1.0, False), ("traceidratio", 1.0, False),
    ("parentbased_traceidratio", 1.0, False), ("parentbased_traceidratio", 0.5, False),
])
def test_the_assembler_asks_only_where_an_answer_can_differ_from_its_own(name, ratio, skipped):
    """Without a sampler the assembler samples a new trace and keeps a parent's flags:
    the sampler is left out only where every answer the SDK gives is that."""
    s = HeadSampler(name, ratio)
    assert (s.for_assembler() is None) is skipped
    if skipped:
        rng = random.Random(3)
        for _ in range(200):
            trace_id, flags = rng.getrandbits(128) | 1, rng.getrandbits(8)
            assert s(trace_id, None, 1, False) == 1
            for remote in (True, False):
                assert s(trace_id, PARENT, flags, remote) == flags
