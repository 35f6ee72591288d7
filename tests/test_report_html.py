"""report.html: self-contained, and its attention viewer reacts to the URL hash in a real
headless Chromium (two heads, two different screenshots; `query=` is what hovering a query
token sets, so it exercises the same highlight)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess

import numpy as np
import pytest

from analysis.analyzer import TransformerAnalyzer
from analysis.outputs import write_outputs
from spec import TransformerConfig

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu",
                  "--disable-background-networking", "--disable-component-update",
                  "--disable-sync", "--no-first-run", "--window-size=1100,900",
                  "--hide-scrollbars"]
SRC = np.array([[5, 6, 7, 8, 9, 10, 2], [11, 12, 13, 14, 2, 0, 0]])


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    torch_model = pytest.importorskip("torch_model")
    cfg = TransformerConfig.preset("tiny", dropout_rate=0.0)
    out = tmp_path_factory.mktemp("run")
    analyzer = TransformerAnalyzer(torch_model.init(cfg, 0))
    result = write_outputs(analyzer, out, SRC, tokens=[list("abcdef."), list("ghij.__")],
                           figures=False)
    return result["files"]["html"], result["report"]


def _data(html: str) -> dict:
    match = re.search(r"<script>const DATA=(.*?);</script>", html, re.S)
    assert match, "the viewer's data block is missing"
    return json.loads(match.group(1).replace("<\\/", "</"))


def test_page_is_self_contained_and_holds_the_tables(page):
    path, report = page
    html = path.read_text(encoding="utf-8")
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", html)  # nothing fetched
    assert "<link" not in html and "@import" not in html
    for section in ("Attention viewer", "Attention patterns per head", "Layer contributions",
                    "Gradient flow", "Q, K, V statistics"):
        assert section in html
    data = _data(html)
    names = [b["name"] for b in data["blocks"]]
    assert names == list(report["attention_patterns"]["blocks"])
    block = data["blocks"][names.index("decoder/layer_1/cross_attn")]
    assert (block["queries"], block["keys"]) == ("tgt", "src")
    assert np.asarray(block["weights"]).shape == (4, 7, 7)  # [h, t, s] of example 0
    assert data["tokens"]["src"] == list("abcdef.")
    assert data["tokens"]["tgt"] == ["<s>"] + list("abcdef")  # copy-task target, labelled


def _screenshot(chromium: str, url: str, path, profile) -> bytes:
    done = subprocess.run([chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}",
                           f"--screenshot={path}", url], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0 and path.is_file(), done.stderr[-2000:]
    return path.read_bytes()


def test_viewer_follows_the_url_hash_in_headless_chromium(page, tmp_path):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("chromium is not installed (apt-get install chromium)")
    path, _ = page
    base = path.resolve().as_uri()
    shots = {}
    for name, view in (("head0", "kind=decoder/cross_attn&layer=1&head=0"),
                       ("head1", "kind=decoder/cross_attn&layer=1&head=1"),
                       ("head1_again", "kind=decoder/cross_attn&layer=1&head=1"),
                       ("hover", "kind=decoder/cross_attn&layer=1&head=1&query=2")):
        shots[name] = _screenshot(chromium, f"{base}#{view}", tmp_path / f"{name}.png",
                                  tmp_path / f"profile_{name}")
    assert shots["head0"] != shots["head1"]      # another head, another picture
    assert shots["head1"] == shots["head1_again"]  # and the same view renders the same
    assert shots["hover"] != shots["head1"]      # a hovered query highlights its keys
