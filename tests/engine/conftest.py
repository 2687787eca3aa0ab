import numpy as np
import pytest

from tests.engine.golden_data import IMAGES, golden_image


@pytest.fixture(scope="session")
def images() -> dict[str, np.ndarray]:
    return {name: golden_image(name) for name in IMAGES}
