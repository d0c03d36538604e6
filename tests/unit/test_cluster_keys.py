"""The Redis Cluster key helpers: slot tags, grouping by slot, the tagged key names."""

from __future__ import annotations

from redis.crc import key_slot

from streamproc.adapters import keys
from streamproc.adapters.cluster import SLOTS, group_by_slot, partition, slot_of, slot_tag
from streamproc.adapters.deployment import DeploymentMarker, guard, marker_copy_keys


def test_every_slot_has_a_tag_that_hashes_to_it() -> None:
    assert [key_slot(f"x:{{{slot_tag(s)}}}:y".encode()) for s in range(SLOTS)] == \
        list(range(SLOTS))


def test_the_marker_copies_cover_every_slot_once() -> None:
    names = marker_copy_keys("sp")
    assert len(set(names)) == SLOTS
    assert sorted(slot_of(n) for n in names) == list(range(SLOTS))


def test_a_batch_groups_by_slot_in_first_seen_order_and_is_one_group_off_cluster() -> None:
    names = [keys.profile_key("sp", f"c-{i}") for i in range(200)]
    assert group_by_slot(names, cluster=False) == [list(range(200))]
    groups = group_by_slot(names + names[:3], cluster=True)
    assert sorted(i for g in groups for i in g) == list(range(203))
    assert all(len({slot_of((names + names[:3])[i]) for i in g}) == 1 for g in groups)
    assert [g[0] for g in groups] == sorted(g[0] for g in groups)
    assert partition(["a", "b"], lambda x: x, cluster=False) == [["a", "b"]]


def test_model_keys_share_one_slot_and_the_guard_names_the_copy_of_the_keys_slot() -> None:
    names = [keys.model_key("sp", n) for n in ("current", "trainer", "bundle:7", "x")]
    assert len({slot_of(n) for n in names}) == 1
    single, cluster = DeploymentMarker("sp:deployment"), DeploymentMarker("sp:deployment", "sp")
    single.value = cluster.value = b"id"
    profile = keys.profile_key("sp", "c-1")
    assert guard(single, profile) == (["sp:deployment"], [b"id"])
    [copy], args = guard(cluster, profile)
    assert slot_of(copy) == slot_of(profile)
    assert args == [b"id"]
    assert guard(None, profile) == ([], [""])
