from services.common.regions import RegionTree, Tier


def test_bundled_sichuan_tree_has_province_cities_and_counties() -> None:
    tree = RegionTree.load()
    tiers = [r.tier for r in tree.regions.values()]
    assert tiers.count(Tier.PROVINCE) == 1
    assert tiers.count(Tier.CITY) == 21
    assert tiers.count(Tier.COUNTY) == 183


def test_subtree_and_containment_follow_parents() -> None:
    tree = RegionTree.load()
    assert tree.contains("511100", "511102")
    assert tree.contains("510000", "511102")
    assert not tree.contains("511000", "511102")  # 内江 does not hold 乐山's 市中区
    assert "511102" in set(tree.subtree("511100"))
    assert tree.child_toward("510000", "511102") == "511100"
    assert tree.child_toward("511100", "511102") == "511102"
    assert tree.child_toward("511102", "511102") is None
    assert tree.display_name("511102") == "四川省乐山市市中区"
