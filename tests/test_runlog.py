"""The typed, versioned run log (``harness.runlog``): a manifest written under another schema
version is refused naming both versions, one without a version loads, and rewriting a manifest
keeps every key (unknown ones included) in its place."""

from __future__ import annotations

import json

import pytest

from harness.errors import DataError
from harness.results.rundir import load_run
from harness.runlog import ANALYZE_SCHEMA, EVAL_SCHEMA, Manifest, parse_manifest

EVAL = {"schema": EVAL_SCHEMA, "run_id": "r", "status": "complete", "started": "2026-01-01T00:00:00+00:00",
        "command": ["harness", "run"], "recipe": {"name": "r"}, "recipe_hash": "h", "limit": None, "seed": 0,
        "models": {"m": {"fingerprint_id": "f"}}, "datasets": {}, "attacks": {
            "prefill": {"type": "prefill", "hash": "a", "config": {"depths": [0, 5]}, "note": "kept"}},
        "utility": {}, "judges": {"keyword": {"type": "keyword", "hash": "j", "config": {}, "resolved": {}}},
        "engines": {}, "hardware": {}, "packages": {"torch": None}, "git": {"commit": None}, "finished": "x",
        "counts": {"samples": 1}, "timings": {"total_s": 1.5}, "from_a_later_version": [1, 2]}


def test_a_manifest_round_trips_key_for_key():
    m = parse_manifest(json.loads(json.dumps(EVAL)), "manifest.json")
    assert m.attack_type("prefill") == "prefill" and m.attack_type("other") == "other"
    assert m.attacks["prefill"].config == {"depths": [0, 5]} and m.limit is None and not m.is_analysis
    assert json.dumps(m.dump()) == json.dumps(EVAL)  # same keys, same order, nulls kept, unknown kept
    fresh = Manifest(schema=EVAL_SCHEMA, run_id="r")
    fresh.status = "complete"
    assert fresh.dump() == {"schema": EVAL_SCHEMA, "run_id": "r", "status": "complete"}  # only what was set


@pytest.mark.parametrize("raw, reads", [({"schema": 1, "run_id": "old"}, EVAL_SCHEMA),
                                        ({"schema": EVAL_SCHEMA + 1}, EVAL_SCHEMA),
                                        ({"schema": ANALYZE_SCHEMA + 1, "kind": "analyze"}, ANALYZE_SCHEMA)])
def test_another_schema_version_is_refused_naming_both(raw, reads):
    with pytest.raises(DataError, match=rf"x/manifest.json: schema {raw['schema']}, this version reads {reads}"):
        parse_manifest(raw, "x/manifest.json")


def test_unversioned_manifests_load_and_bad_ones_name_the_key(tmp_path):
    assert parse_manifest({"kind": "analyze", "status": "complete"}, "m").is_analysis
    assert parse_manifest({"run_id": "hand-written"}, "m").run_id == "hand-written"
    with pytest.raises(DataError, match=r"m: attacks\.prefill"):
        parse_manifest({"attacks": {"prefill": "not a mapping"}}, "m")
    with pytest.raises(DataError, match="not a JSON object"):
        parse_manifest([1], "m")
    run = tmp_path / "old"
    run.mkdir()
    (run / "manifest.json").write_text(json.dumps({"schema": 1, "run_id": "old"}))
    with pytest.raises(DataError, match=f"schema 1, this version reads {EVAL_SCHEMA}"):
        load_run(run)
