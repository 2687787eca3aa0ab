"""The test suite as a regular package: `tests.support` must resolve here even when an installed
wheel ships its own top-level `tests` package (mmsegmentation 1.2.2 does; a regular package in
site-packages would otherwise shadow this folder, a namespace package, and conftest fails to import)."""
