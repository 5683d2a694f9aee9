"""The end-to-end eval bench patches TALLRec's evaluate.py only where listed, and stops when a patch does not fit."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from bench.eval_e2e import TALLREC_SHA256, patch_evaluate, tallrec_patches


def _source_with_every_patch_site(patches) -> str:
    return "".join(f"# before\n{patch.old}\n# after\n" for patch in patches)


@pytest.mark.parametrize("keep_threads", [False, True])
def test_every_patch_is_applied_once(keep_threads):
    patches = tallrec_patches(10539, 5230, keep_threads)
    patched = patch_evaluate(_source_with_every_patch_site(patches), patches)
    for patch in patches:
        assert patch.new in patched
        assert patch.old not in patched or patch.old in patch.new
    assert "scores[:,[10539, 5230]]" in patched and "8241" not in patched
    assert any("set_num_threads" in patch.old for patch in patches) is not keep_threads


@pytest.mark.parametrize("copies", [0, 2])
def test_a_patch_that_does_not_match_once_stops_the_bench(copies):
    patches = tallrec_patches(1, 2, keep_threads=False)
    source = _source_with_every_patch_site(patches).replace(patches[3].old, patches[3].old * copies)
    with pytest.raises(SystemExit, match=f"found it {copies} times"):
        patch_evaluate(source, patches)


def test_tallrecs_own_evaluate_py_patches_into_valid_python():
    path = os.environ.get("TALLREC_EVALUATE")
    if not path or not Path(path).is_file():
        pytest.skip("TALLREC_EVALUATE does not name TALLRec's evaluate.py (see bench/eval_e2e.py for where to get it)")
    import hashlib

    source = Path(path).read_text()
    assert hashlib.sha256(source.encode()).hexdigest() == TALLREC_SHA256
    patched = patch_evaluate(source, tallrec_patches(10539, 5230, keep_threads=False))
    compile(patched, "evaluate.py", "exec")
    assert "import gradio" not in patched and "LlamaTokenizer.from_pretrained" not in patched
