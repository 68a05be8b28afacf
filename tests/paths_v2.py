"""Where the cde-small-v2 tests find the shared tiny v2 checkpoint fixture.

It lives in `../shared/fixtures/cde-v2-tiny` beside the checkout (as `paths.TINY_CHECKPOINT`);
`CDE_V2_TINY_CHECKPOINT` points elsewhere.
"""

from __future__ import annotations

import os
from pathlib import Path

from paths import REPO_ROOT

V2_TINY_CHECKPOINT = Path(
    os.environ.get(
        "CDE_V2_TINY_CHECKPOINT", REPO_ROOT.parent / "shared" / "fixtures" / "cde-v2-tiny"
    )
)
V2_GOLDEN_JSON = V2_TINY_CHECKPOINT / "golden.json"
