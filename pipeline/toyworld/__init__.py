"""A synthetic world with exact segmentation ground truth, for training and testing without real data.

Scenes are 224 px (ViT-B/16 geometry: 14 x 14 patches of 16 px) with 2-3 textured stuff regions
(sky, grass, sand, water, brick, snow, wood, road) and 0-3 shaped things (ball, star, fish, kite,
flower, house). Modules: `classes` (label order, palette, vocabulary file), `noise` and `materials`
(stuff textures), `shapes` (things), `generator` (scenes, captions, splits), `shards` (WebDataset).

    from pipeline.toyworld import generate_scene, write_shards
    scene = generate_scene(seed=2, index=0)      # .image (224, 224, 3) uint8, .label (224, 224) uint8
    write_shards("out/toy", split="test", count=200)
"""
from pipeline.toyworld.classes import CLASSES, NAMES, NUM_CLASSES, PALETTE, colorize, vocabulary_text, write_vocabulary
from pipeline.toyworld.generator import SCENE_SIZE, SPLIT_SEEDS, Scene, generate_scene, generate_scenes, split_seed
from pipeline.toyworld.shards import ShardSet, read_images, read_labels, write_shards

__all__ = [
    "CLASSES", "NAMES", "NUM_CLASSES", "PALETTE", "SCENE_SIZE", "SPLIT_SEEDS", "Scene", "ShardSet", "colorize",
    "generate_scene", "generate_scenes", "read_images", "read_labels", "split_seed", "vocabulary_text",
    "write_shards", "write_vocabulary",
]
