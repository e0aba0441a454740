"""Topology files for `lianxin up --topology` and `lianxin host`: the tree, the placement on hosts, and
one clear line for every mistake a person can make in the file."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.common.regions import RegionTree
from services.topology import TopologyError, dump_topology, load_topology, parse_topology
from tests.support.cli import lianxin, one_error_line

REGIONS = RegionTree.load()
SMALL = Path(__file__).parents[1] / "fixtures" / "topology_small.yaml"


def test_the_small_file_puts_the_province_alone_and_the_city_with_its_counties() -> None:
    topology = load_topology(str(SMALL), REGIONS)
    assert topology.nodes == (("510000", None), ("511100", "510000"), ("511102", "511100"), ("511111", "511100"))
    assert topology.hosts == 2
    assert topology.members(0) == [("510000", None)]
    assert [code for code, _ in topology.members(1)] == ["511100", "511102", "511111"]
    assert topology.address("511111", 7400) == "127.0.0.1:7403"
    assert topology.address("511100", 7400, "lianxin-host-{host}.lianxin-host") == "lianxin-host-1.lianxin-host:7401"


def test_sichuan_is_every_shipped_region_parents_first_with_each_city_whole_on_one_host() -> None:
    topology = load_topology("sichuan", REGIONS)
    tiers = [REGIONS.get(code).tier.value for code, _ in topology.nodes]
    assert (tiers.count("province"), tiers.count("city"), tiers.count("county")) == (1, 21, 183)
    assert tiers == sorted(tiers, key=["province", "city", "county"].index)
    assert topology.hosts == 4 and topology.members(0) == [("510000", None)]
    for code, parent in topology.nodes[1:]:
        if parent is not None and parent != "510000":
            assert topology.host_of[code] == topology.host_of[parent]  # a county's link stays in its process
    sizes = [len(topology.members(h)) for h in range(1, topology.hosts)]
    assert max(sizes) - min(sizes) <= 15  # balanced by whole cities


def test_a_written_topology_reads_back_to_the_same_placement() -> None:
    for hosts in (None, 2, 7):
        topology = load_topology("sichuan", REGIONS, hosts=hosts)
        again = parse_topology(dump_topology(topology), REGIONS)
        assert again == topology


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("tree: [", "not valid YAML at line 1"),
        ("- 510000", "expected a mapping with a 'tree' key"),
        ("tree: {}\nnodes: 3", "nodes: unknown key"),
        ("hosts: 0\ntree: {'510000': }", "hosts: must be a whole number of at least 1, got 0"),
        ("tree: {'510000': , '520000': }", "tree: must have exactly one root region"),
        ("tree: {'5100': }", "tree.5100: must be a 6-digit region code"),
        ("tree: {'510000': {'999999': }}", "tree.510000.999999: not a region in the region list"),
        ("tree: {'510000': {'511102': }}", "tree.510000.511102: region 511102 is not under 510000"),
        ("tree: {'510000': [511100]}", "tree.510000: children must be a mapping of region codes, got list"),
        ("tree: {'510000': {'511100': {'511102': }, '510100': {'511102': }}}", "appears twice"),
    ],
)
def test_each_mistake_in_a_file_is_named_in_one_line(text: str, message: str) -> None:
    with pytest.raises(TopologyError) as caught:
        parse_topology(text, REGIONS)
    assert message in str(caught.value) and "\n" not in str(caught.value)


def test_unquoted_codes_read_as_numbers_are_region_codes_too() -> None:
    topology = parse_topology("tree:\n  510000:\n    511100:\n", REGIONS)
    assert topology.nodes == (("510000", None), ("511100", "510000"))


def test_the_cli_refuses_a_bad_topology_with_one_line_and_exit_3(tmp_path: Path) -> None:
    bad = tmp_path / "tree.yaml"
    bad.write_text("tree: {'510000': {'999999': }}\n", encoding="utf-8")
    for args in (("up", "--topology", str(bad)), ("host", "--topology", str(bad), "--host-index", "0")):
        result = lianxin(*args)
        assert result.returncode == 3
        assert one_error_line(result) == (
            "lianxin: INVALID_ARGUMENT: topology tree.yaml: tree.510000.999999: not a region in the region list"
        )
    result = lianxin("host", "--topology", str(SMALL), "--host-index", "5")
    assert one_error_line(result) == "lianxin: INVALID_ARGUMENT: host index 5: the topology has hosts 0..1"
