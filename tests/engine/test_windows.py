from pipeline.engine.windows import plan_crops


def _covered(h, w, crops):
    grid = [[0] * w for _ in range(h)]
    for c in crops:
        for y in range(c.y1, c.y2):
            for x in range(c.x1, c.x2):
                grid[y][x] += 1
    return grid


def test_sliding_plan_matches_mmseg_formula():
    crops = plan_crops(224, 337, 224, 112)
    assert [(c.x1, c.x2) for c in crops] == [(0, 224), (112, 336), (113, 337)]
    assert all(c.shape == (224, 224) for c in crops)
    assert all(v >= 1 for row in _covered(224, 337, crops) for v in row)


def test_small_image_gives_one_smaller_crop():
    crops = plan_crops(100, 150, 224, 112)
    assert len(crops) == 1 and crops[0].shape == (100, 150)


def test_whole_image_mode():
    assert [c.shape for c in plan_crops(336, 448, 0, 112)] == [(336, 448)]
