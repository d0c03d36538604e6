"""The stored profile format: a positional msgpack array over ``STORED_FIELDS``.

The Redis conformance suite checks that Lua stores what ``encode_profile`` encodes, byte
for byte, and that Lua refuses to store a field without a slot; here: the field list
covers every field the Python twin writes, rows round-trip, and the packing matches
what Redis 7.0's cmsgpack was seen to write.
"""

from __future__ import annotations

import statistics
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given

from streamproc.adapters.redis_store import (
    decode_profile,
    encode_profile,
    pack_like_lua,
)
from streamproc.core.features import (
    BINARY_FIELDS,
    FIELDS,
    PROFILE_FORMAT,
    STORED_FIELDS,
    FeatureConfig,
    InMemoryProfiles,
    ProfileFormatError,
    event_lane,
    event_ops,
    profile_from_row,
    profile_row,
)
from streamproc.core.generator import TrafficGenerator
from streamproc.core.replay import event_namespace, event_time
from tests.unit.test_features import FAST, run, streams

#: The slots of format 1 as first released. Stored profiles are read by position: a slot
#: never moves or goes, new fields are appended.
FORMAT_1 = (
    "ev", "fs", "la", "lq", "dt", "se", "pv", "vv", "sr", "v7", "v30",
    "ls", "ls@", "lsd", "ss", "jc", "k", "jcf",
    "ac", "rc", "cs", "c7", "c30", "lk",
    "o", "rv", "it", "fo", "lo", "o7", "o30", "s7", "s30", "os", "cc", "jp", "jpf",
    "rf", "ra",
)


@pytest.fixture(scope="module")
def generator_states() -> dict[str, dict[str, Any]]:
    """Profiles of 60 generated customers after 90 days of traffic."""
    gen = TrafficGenerator(customers=60, seed=7, start=datetime(2026, 1, 1, tzinfo=UTC),
                           days=90)
    twin = InMemoryProfiles.empty(FeatureConfig(), clock=lambda: 1_800_000_000)
    for g in gen.events():
        ts = event_time(g.value)
        ns = event_namespace(g.value)
        twin.apply(g.key, str(g.value["event_id"]), event_ops(ns, ts), ts, event_lane(ns))
    return twin.states


def test_format_1_slots_never_move() -> None:
    assert PROFILE_FORMAT == 1
    assert STORED_FIELDS[:len(FORMAT_1)] == FORMAT_1


def test_every_field_has_one_slot() -> None:
    assert len(set(STORED_FIELDS)) == len(STORED_FIELDS)
    assert FIELDS.keys() <= set(STORED_FIELDS)
    assert set(BINARY_FIELDS) <= set(STORED_FIELDS)
    assert FeatureConfig().as_wire()["fields"] == list(STORED_FIELDS)


def test_the_field_list_covers_every_field_the_interpreters_write(
        generator_states: dict[str, dict[str, Any]]) -> None:
    # Lua writes what the twin writes (the conformance suite compares them, and Lua
    # refuses to save a field without a slot); every slot is used by some customer.
    written = {code for state in generator_states.values() for code in state}
    assert written <= set(STORED_FIELDS), written - set(STORED_FIELDS)
    assert written == set(STORED_FIELDS)


@FAST
@given(streams())
def test_messy_streams_write_only_fields_with_a_slot_and_rows_round_trip(
        stream: list[dict[str, Any]]) -> None:
    small = FeatureConfig(dedupe_events=2, dedupe_purchases=1, sessions=1, links=1)
    for config in (FeatureConfig(), small):
        for state in run(stream, config).states.values():
            assert state.keys() <= set(STORED_FIELDS)
            row = profile_row(state)
            assert row[-1] is not False
            assert profile_from_row(row) == state
            assert decode_profile(encode_profile(state)) == state
            with pytest.raises(ProfileFormatError, match="not an array"):
                decode_profile(pack_like_lua(state))  # a map is not a profile


def test_generator_profiles_round_trip_and_shrink(
        generator_states: dict[str, dict[str, Any]]) -> None:
    saved = []
    for state in generator_states.values():
        assert decode_profile(encode_profile(state)) == state
        # What storing no field names saves (the README's figure): the same state as a map.
        saved.append(len(pack_like_lua(state)) - len(encode_profile(state)))
    assert min(saved) > 0
    assert statistics.median(saved) >= 100  # ~35 field names of 1-3 characters


def test_absent_fields_are_false_and_trailing_ones_left_out() -> None:
    assert profile_row({}) == [PROFILE_FORMAT]
    assert profile_row({"fs": 5.0}) == [PROFILE_FORMAT, False, 5.0]
    last = STORED_FIELDS[-1]
    row = profile_row({last: 2.5})
    assert len(row) == len(STORED_FIELDS) + 1
    assert row[1:-1] == [False] * (len(STORED_FIELDS) - 1)
    assert profile_from_row(row) == {last: 2.5}
    assert profile_from_row([PROFILE_FORMAT, None, 5.0]) == {"fs": 5.0}  # nil: absent too


def test_a_field_without_a_slot_is_refused() -> None:
    with pytest.raises(ProfileFormatError, match="without a stored position"):
        profile_row({"ev": 1.0, "zz": 2.0})


@pytest.mark.parametrize("row", [
    [],
    [2, 1.0],
    [True, 1.0],
    ["1", 1.0],
    [PROFILE_FORMAT, *([1.0] * (len(STORED_FIELDS) + 1))],
])
def test_rows_of_another_format_or_a_newer_version_are_refused(row: list[Any]) -> None:
    with pytest.raises(ProfileFormatError):
        profile_from_row(row)
    with pytest.raises(ProfileFormatError):
        decode_profile(pack_like_lua(row))


def test_values_pack_as_redis_cmsgpack_packs_them() -> None:
    # Bytes Redis 7.0's cmsgpack.pack returned for the same Lua values.
    assert pack_like_lua([0.5, 0.1, 1.0, 1767225600.123, -1, 300]) == bytes.fromhex(
        "96ca3f000000cb3fb999999999999a01cb41da556e4007df3bffcd012c")
    assert pack_like_lua([1, False, 3]) == bytes.fromhex("9301c203")
    assert pack_like_lua({"1": 4}) == bytes.fromhex("81a13104")
    assert pack_like_lua("a" * 40) == b"\xd9\x28" + b"a" * 40
    assert pack_like_lua(b"\xff" * 300)[:3] == b"\xda\x01\x2c"
    assert pack_like_lua(list(range(16)))[:3] == b"\xdc\x00\x10"
    assert pack_like_lua(1e300)[:1] == b"\xcb"  # too large for a float32
