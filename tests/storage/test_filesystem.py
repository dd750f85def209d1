"""The storage conformance suite over the filesystem store; the side door is the directory tree."""

from __future__ import annotations

from pathlib import Path

import pytest

from appliance.storage.filesystem import FilesystemStore
from tests.storage.suite import SideDoor, StoreSuite

# Directories the store may keep while empty: the roots of the key tree (layout.py).
_SKELETON = {"blobs", "uploads"}


class TestFilesystemStore(StoreSuite):
    @pytest.fixture
    def store(self, tmp_path: Path) -> FilesystemStore:
        return FilesystemStore(tmp_path / "storage")

    @pytest.fixture
    def side_door(self, tmp_path: Path) -> SideDoor:
        root = tmp_path / "storage"

        def walk() -> list[str]:
            if not root.exists():
                return []
            left = []
            for path in sorted(root.rglob("*")):
                rel = path.relative_to(root)
                if path.is_dir() and (
                    str(rel) in _SKELETON or (len(rel.parts) == 2 and rel.parts[0] == "blobs")
                ):
                    continue  # blobs/, blobs/<algorithm>/, uploads/
                left.append(str(rel) + ("/" if path.is_dir() else ""))
            return left

        return walk
