"""Every code block of docs/models.md runs as written (a fresh namespace per block)."""

import pathlib
import re

import pytest

PAGE = pathlib.Path(__file__).resolve().parents[1] / "docs" / "models.md"
BLOCKS = re.findall(r"```python\n(.*?)```", PAGE.read_text(), flags=re.S)


def test_the_page_has_its_examples():
    assert len(BLOCKS) >= 5


@pytest.mark.parametrize("code", BLOCKS, ids=[f"block{i}" for i in range(len(BLOCKS))])
def test_models_page_block_runs(code):
    import torch

    torch.manual_seed(0)
    namespace: dict = {}
    exec(compile(code, str(PAGE), "exec"), namespace)
    params = [
        p for v in namespace.values() if isinstance(v, torch.nn.Module) for p in v.parameters()
    ]
    assert params and any(p.grad is not None and p.grad.abs().sum() > 0 for p in params)
