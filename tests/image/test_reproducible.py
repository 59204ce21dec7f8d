"""Reproducibility: a second build from the same inputs (started with the first, see
conftest.rebuild), the two raw images' file trees compared by packer/compare.py. When both
builds are an earlier run's (same inputs key), the test says so (JUnit property `reused`)
and the summary counts it as reused, not as run. The report
(every difference, the allow-list's, whether the raw images are bit-identical) is printed
and kept in RESULTS/image/reproducibility.json."""

from __future__ import annotations

import json

import pytest

from image_helpers import RESULTS, SUMMARY, TARGET

import compare  # noqa: E402  (packer/compare.py)

pytestmark = pytest.mark.timeout(5400)


def test_reproducible_file_trees(image, rebuild, record_property):
    again = rebuild.wait()
    assert json.loads((again / "build.json").read_text())["inputs_key"] == image["meta"]["inputs_key"], \
        "the two builds were not made from the same inputs"
    if image["reused"] and rebuild.reused:      # the same two builds as an earlier run: its verdict again
        record_property("reused", f"image {image['reused']}; second build {rebuild.reused}")
    else:
        for what, reused in (("image", image["reused"]), ("second build", rebuild.reused)):
            if reused:
                record_property("reused_input", f"{what}: {reused}")
    report = compare.compare(image["raw"], again / f"spanprobe-{TARGET}.raw")
    (RESULTS / "reproducibility.json").write_text(json.dumps(report, indent=2) + "\n")
    SUMMARY["reproducibility"] = (f"{report['entries']} entries, {len(report['differences'])} differences, "
                                  f"{len(report['allowed'])} allowed, bit-identical "
                                  f"{'yes' if report['bit_identical'] else 'no'}")
    print(f"\nreproducibility: {report['entries']} entries, {len(report['differences'])} differences, "
          f"{len(report['allowed'])} allowed; raw images bit-identical: "
          f"{'yes' if report['bit_identical'] else 'no'}")
    for d in report["allowed"]:
        print(f"  allowed {d['path']}: {d['differs']} ({d['allowed']})")
    for d in report["differences"][:50]:
        print(f"  DIFF {d['path']}: {d['differs']}")
    assert report["entries"] > 10000, "the root file system was not read"
    assert not report["differences"], f"{len(report['differences'])} differences (see {RESULTS}/reproducibility.json)"
