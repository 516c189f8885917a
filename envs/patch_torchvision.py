"""Guard torchvision 0.28's two unguarded fake-op registrations on a CPU-only torch.

torchvision 0.28.0 is the only build for torch 2.13.0 and it is a CUDA build: its C++ ops do not load
against the CPU torch, and `register_fake("torchvision::nms")` / `("torchvision::qnms")` then raise at
import, so `import timm` fails. Every other registration in that file is already guarded by
`torchvision.extension._has_ops()`; this guards those two the same way. Idempotent, and a no-op where
the ops load (a GPU host with the CUDA torch).
"""

import importlib.util
import re
import sys
from pathlib import Path

GUARDED = '@(torch.library.register_fake("torchvision::{op}") if torchvision.extension._has_ops() else (lambda f: f))'


def main() -> int:
    spec = importlib.util.find_spec("torchvision")
    if spec is None or spec.origin is None:
        print("patch_torchvision: torchvision is not installed", file=sys.stderr)
        return 1
    path = Path(spec.origin).parent / "_meta_registrations.py"
    text = path.read_text()
    patched = re.sub(
        r'^@torch\.library\.register_fake\("torchvision::(q?nms)"\)$',
        lambda m: GUARDED.format(op=m.group(1)),
        text,
        flags=re.MULTILINE,
    )
    if patched != text:
        path.write_text(patched)
        print(f"patch_torchvision: guarded nms/qnms fake registrations in {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
