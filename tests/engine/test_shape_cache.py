import torch

from pipeline.engine.shape_cache import ShapeCache, tensor_bytes
from pipeline.engine.sfr import grid_geometry


def _table(n: int) -> torch.Tensor:
    return torch.zeros(n, dtype=torch.uint8)  # n bytes


def test_keeps_recent_shapes_within_the_byte_budget():
    built = []
    cache = ShapeCache(lambda n: built.append(n) or _table(n), budget=250)
    for n in (100, 100, 120, 100):
        cache(n)
    assert built == [100, 120]  # the second and fourth calls were hits
    cache(90)  # 100 + 120 + 90 > 250: the least recent (120) goes
    info = cache.cache_info()
    assert (info.entries, info.bytes, info.hits, info.misses) == (2, 190, 2, 3)
    cache(100)
    assert built == [100, 120, 90]  # 100 was used last before 90, so it stayed


def test_a_table_over_the_budget_is_returned_but_not_kept():
    cache = ShapeCache(_table, budget=50)
    assert cache(80).numel() == 80
    assert cache.cache_info().entries == 0 and cache.cache_info().bytes == 0
    assert cache(80) is not cache(80)


def test_counts_the_tensors_inside_a_dataclass():
    geo = grid_geometry(5, 7)
    assert tensor_bytes(geo) == geo.path_bits.numel() * 8 + geo.decay.numel() * 4
    assert grid_geometry(5, 7) is geo
