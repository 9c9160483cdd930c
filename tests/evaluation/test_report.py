"""The evaluate stage's documents: report.html offline in a real browser, report.md, the model card, MLflow.

The pages come from the session's real pipeline run (``pipeline_run``: every stage on tiny data).
The browser test opens ``report.html`` in Debian's headless Chromium over the DevTools protocol
(:mod:`tests.support.chromium`), records every request the page makes and inspects every image.
"""

from __future__ import annotations

import base64
import json
import re
import struct
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest

from medrobust.evaluation.document import Document
from medrobust.utils import dvc_md5
from tests.support.chromium import open_page

FIGURES = ("robustness.png", "shifts.png", "reliability.png", "roc.png", "certified.png", "saliency.png")


class _Tags(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))


def _tags(page: str) -> list[tuple[str, dict[str, str | None]]]:
    parser = _Tags()
    parser.feed(page)
    return parser.tags


def _png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    return struct.unpack(">II", data[16:24])


def test_report_html_renders_offline_in_headless_chromium(pipeline_run, tmp_path):
    page_path = pipeline_run.evaluation / "report.html"
    with open_page(page_path.resolve().as_uri(), tmp_path / "profile") as page:
        images = page.evaluate("Array.from(document.images).map(i => "
                               "({w: i.naturalWidth, h: i.naturalHeight, complete: i.complete, alt: i.alt}))")
        first_heading = page.evaluate("document.querySelector('h1').textContent")
        banner = page.evaluate("document.querySelector('.banner').textContent")
        headings = page.evaluate("Array.from(document.querySelectorAll('h2')).map(h => h.textContent)")
        shot = page.screenshot(tmp_path / "report.png")
        urls = page.requested_urls()
    # every figure decoded in the browser
    assert len(images) == len(FIGURES), images
    assert all(i["complete"] and i["w"] > 0 and i["h"] > 0 for i in images), images
    # no request left the page: only the file itself and its data: URLs
    assert urls and urls[0] == page_path.resolve().as_uri()
    assert all(u.startswith(("file:", "data:")) for u in urls), urls
    # the decision and the headline come first, then the sections
    assert first_heading.startswith("Robustness report")
    assert banner.startswith(("Gates PASS", "Gates FAIL"))
    for section in ("Robustness", "Operating point and calibration", "Slices", "Certified robustness",
                    "Where the model looks"):
        assert any(h.startswith(section) for h in headings), (section, headings)
    assert any(h.startswith("Natural shifts") for h in headings)
    width, height = _png_size(shot.read_bytes())
    assert width >= 1000 and height > 2000, (width, height)  # the whole page, not an empty viewport


def test_report_html_is_one_self_contained_file(pipeline_run):
    page = (pipeline_run.evaluation / "report.html").read_text()
    tags = _tags(page)
    names = [t for t, _ in tags]
    assert "script" not in names and "link" not in names and "iframe" not in names
    images = [a for t, a in tags if t == "img"]
    assert len(images) == len(FIGURES)
    assert all(str(a.get("src", "")).startswith("data:image/png;base64,") for a in images)
    # every embedded image is the figure file written beside it, byte for byte
    embedded = {str(a["src"]).removeprefix("data:image/png;base64,") for a in images}
    assert embedded == {base64.b64encode((pipeline_run.evaluation / f).read_bytes()).decode() for f in FIGURES}
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page)
    assert "@import" not in page and "url(" not in page


def test_report_md_is_the_short_summary_and_points_to_the_page(pipeline_run):
    md = (pipeline_run.evaluation / "report.md").read_text()
    html_page = (pipeline_run.evaluation / "report.html").read_text()
    metrics = json.loads((pipeline_run.evaluation / "metrics.json").read_text())
    assert len(md) < len(html_page) / 5
    assert "report.html" in md
    clean = metrics["clean"]["accuracy"]
    printed = f"{clean['value']:.2f} [{clean['ci'][0]:.2f}, {clean['ci'][1]:.2f}]"
    assert printed in md and printed in html_page
    assert f"on {metrics['n_test']} test images of {metrics['n_patients']} patients" in md


def test_model_card_states_provenance_method_and_limitations(pipeline_run):
    card = (pipeline_run.evaluation / "model_card.md").read_text()
    metrics = json.loads((pipeline_run.evaluation / "metrics.json").read_text())
    for heading in ("## Intended use", "## Data", "## Training", "## Performance on the test split", "## Limitations"):
        assert heading in card
    assert "Out of scope" in card
    # tied to the exact data: the DVC hash of the ingested folder the stage read
    assert f"`{dvc_md5(pipeline_run.dataset)}`" in card
    assert "Great Expectations | PASS" in card
    assert "Madry" in card  # the train method's paper (pgd_at in the tiny params)
    assert f"Every figure rests on {metrics['n_test']} test images from {metrics['n_patients']} patients" in card
    for check in metrics["masking_checks"]:
        assert check["name"] in card
    # the card is inside the HTML page as well
    assert "Model card" in (pipeline_run.evaluation / "report.html").read_text()


def test_documents_and_metrics_are_logged_to_the_models_mlflow_run(pipeline_run):
    from mlflow.tracking import MlflowClient

    run_id = json.loads((pipeline_run.model / "run.json").read_text())["run_id"]
    client = MlflowClient(tracking_uri=pipeline_run.tracking_uri)
    files = {f.path for f in client.list_artifacts(run_id, "evaluation")}
    for name in ("report.html", "report.md", "model_card.md", "metrics.json", "calibration.json", *FIGURES):
        assert f"evaluation/{name}" in files, (name, sorted(files))
    run = client.get_run(run_id)
    metrics = json.loads((pipeline_run.evaluation / "metrics.json").read_text())
    assert run.data.metrics["clean/accuracy"] == pytest.approx(metrics["clean"]["accuracy"]["value"])
    assert run.data.metrics["clean/accuracy.ci_low"] == pytest.approx(metrics["clean"]["accuracy"]["ci"][0])
    calibration = json.loads((pipeline_run.evaluation / "calibration.json").read_text())
    assert run.data.metrics["calibration/temperature"] == pytest.approx(calibration["temperature"])


def test_dvc_md5_is_the_hash_dvc_itself_records(tmp_path):
    folder = tmp_path / "repo" / "data"
    (folder / "sub").mkdir(parents=True)
    (folder / "a.txt").write_text("alpha\n")
    (folder / "sub" / "b.bin").write_bytes(bytes(range(256)))
    (folder / "Z.csv").write_text("x,y\n1,2\n")
    single = tmp_path / "repo" / "one.txt"
    single.write_text("one file\n")
    repo = tmp_path / "repo"
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    dvc = str(Path(sys.executable).parent / "dvc")  # the environment's DVC, whatever the PATH
    subprocess.run([dvc, "init", "-q"], cwd=repo, check=True)
    subprocess.run([dvc, "add", "-q", "data", "one.txt"], cwd=repo, check=True)
    import yaml

    recorded = {p: yaml.safe_load((repo / f"{p}.dvc").read_text())["outs"][0]["md5"] for p in ("data", "one.txt")}
    assert dvc_md5(folder) == recorded["data"] and recorded["data"].endswith(".dir")
    assert dvc_md5(single) == recorded["one.txt"]


def test_document_renders_markdown_and_escaped_html(tmp_path):
    (tmp_path / "fig.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(16))
    doc = Document("Title <1>").banner("Gates PASS — fine", True).h2("Section").p("a **bold** `code` <tag>")
    doc.table(["a", "b"], [["1 & 2", "0.50 [0.40, 0.60]"]]).ul(["one", "two"]).img("fig.png", "a figure")
    doc.img("missing.png", "never written")
    md = doc.markdown()
    assert md.startswith("# Title <1>")
    assert "| 1 & 2 | 0.50 [0.40, 0.60] |" in md and "- one" in md
    page = doc.html(tmp_path)
    assert "<h1>Title &lt;1&gt;</h1>" in page
    assert "<b>bold</b>" in page and "<code>code</code>" in page and "&lt;tag&gt;" in page
    assert '<td class="num">0.50 [0.40, 0.60]</td>' in page and "<td>1 &amp; 2</td>" in page
    assert 'class="banner pass"' in page
    assert page.count("<img") == 1 and 'alt="a figure"' in page and "![a figure](fig.png)" in md


def test_the_browser_check_sees_a_network_request_and_a_broken_image(tmp_path):
    """The control: a page that loads a remote image is caught, and its image has no width."""
    page_path = tmp_path / "leaky.html"
    page_path.write_text('<!DOCTYPE html><html><body><h1>x</h1><img src="http://127.0.0.1:9/x.png"></body></html>')
    with open_page(page_path.as_uri(), tmp_path / "profile") as page:
        widths = page.evaluate("Array.from(document.images).map(i => i.naturalWidth)")
        urls = page.requested_urls()
    assert "http://127.0.0.1:9/x.png" in urls
    assert widths == [0]
