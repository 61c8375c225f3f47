import base64
import json
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pandas as pd
import pytest

from kto_bench.report import ReportSpec, render_report
from tests.report.conftest import build

SPEC_TEXT = "name: sweep\nreport:\n  alpha: 0.05\n"
GRIDS = [
    {"corruption.flip_rate": 0.0, "corruption.desirable_fraction": 1.0},
    {"corruption.flip_rate": 0.2, "corruption.desirable_fraction": 1.0},
    {"corruption.flip_rate": 0.0, "corruption.desirable_fraction": 0.1},
]


def ability(method: str, grid: dict) -> float:
    base = {"dpo": 0.5, "kto": 0.6}[method]
    drop = {"dpo": 1.0, "kto": 0.3}[method] * grid["corruption.flip_rate"]
    return base - drop - (0.05 if grid["corruption.desirable_fraction"] < 1 else 0.0)


@pytest.fixture(scope="module")
def rendered(tmp_path_factory) -> Path:
    root = build(tmp_path_factory.mktemp("results") / "sweep", ability, GRIDS)
    out = tmp_path_factory.mktemp("reports") / "sweep"
    index = render_report(root, out, ReportSpec(), SPEC_TEXT, "sweep")
    assert index == out / "index.html"
    return out


class Refs(HTMLParser):
    """Collects every src/href and the tags seen."""

    def __init__(self) -> None:
        super().__init__()
        self.refs: list[tuple[str, str, str]] = []
        self.tags: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        for k, v in attrs:
            if k in ("src", "href") and v is not None:
                self.refs.append((tag, k, v))


def check_self_contained(html: str, base_dir: Path) -> Refs:
    parser = Refs()
    parser.feed(html)
    for tag, attr, value in parser.refs:
        assert not value.startswith(("http:", "https:", "//")), f"external {tag} {attr}: {value[:80]}"
        if value.startswith("data:"):
            header, payload = value.split(",", 1)
            raw = base64.b64decode(payload)
            assert (header == "data:image/png;base64" and raw.startswith(b"\x89PNG\r\n\x1a\n")) or (
                header.startswith("data:image/svg+xml") and b"<svg" in raw
            ), header
        elif not value.startswith("#"):
            assert (base_dir / value).exists(), f"broken relative {attr}: {value}"
    return parser


def test_report_files_tables_and_plots(rendered):
    for name in ("headline", "claims", "paired", "audit", "training"):
        for ext in ("md", "csv", "tex", "html"):
            assert (rendered / "tables" / f"{name}.{ext}").stat().st_size > 0, (name, ext)
    for name in ("bars", "noise", "imbalance", "training", "rewards"):
        png, svg = rendered / "plots" / f"{name}.png", rendered / "plots" / f"{name}.svg"
        assert png.read_bytes().startswith(b"\x89PNG") and png.stat().st_size > 5000, name
        assert "<svg" in svg.read_text()[:2000], name
    md = (rendered / "report.md").read_text()
    assert (
        "## Headline results" in md
        and "## Matched-settings audit" in md
        and "![noise](plots/noise.png)" in md
    )
    assert "```yaml\nname: sweep" in md


def test_report_is_traceable_and_self_contained(rendered):
    html = (rendered / "index.html").read_text()
    parser = check_self_contained(html, rendered)
    imgs = [v for t, k, v in parser.refs if t == "img"]
    assert len(imgs) == 5 and all(v.startswith("data:image/png;base64,") for v in imgs)
    assert "script" not in parser.tags and "link" not in parser.tags
    for needle in ("dpo-0-desirable_fraction1.0-flip_rate0.0", "base-tiny", "s" * 16, "abc123", "torch 2.13"):
        assert needle in html, needle
    assert "name: sweep" in html  # the spec text
    for table in ("headline", "claims", "paired", "audit", "training"):
        assert f'id="table-{table}"' in html
    claims = pd.read_csv(rendered / "tables" / "claims.csv").set_index("claim")
    noise = claims.loc["demo_noise_robustness"]  # DPO drops 20 points, KTO 6: +14 with three seeds per side
    assert noise["estimate"] == pytest.approx(0.14, abs=0.04) and noise["ci_lo"] <= 0.14 <= noise["ci_hi"]
    assert noise["verdict"] == ("reproduced" if noise["p_holm"] < 0.05 else "inconclusive")


def test_sweep_rows_are_per_grid_point(rendered):
    md = (rendered / "tables" / "headline.md").read_text()
    labels = re.findall(r"^\| (\+\w+ \([^)]*\)|base) \|", md, flags=re.M)
    assert labels[0] == "base" and len(labels) == 1 + 3 * 2
    assert labels[1:3] == [
        "+DPO (desirable_fraction=1.0, flip_rate=0.0)",
        "+KTO (desirable_fraction=1.0, flip_rate=0.0)",
    ]


def test_partial_results_render_with_missing_marks(tmp_path):
    root = build(tmp_path / "partial", ability, GRIDS[:2])
    runs = sorted(p for p in root.iterdir() if not p.name.startswith("base-"))
    shutil.rmtree(runs[0] / "eval")  # evaluation not run yet
    (runs[1] / "metrics.jsonl").unlink()
    (runs[2] / "status.json").write_text(json.dumps({"stages": {"data": {"done": True}}}))
    (runs[3] / "run.json").write_text("{ not json")  # a corrupted record is skipped, not fatal
    for r in runs:
        (r / "rewards.jsonl").unlink()
    for f in (runs[4] / "eval").glob("*.samples.jsonl"):
        f.unlink()
    out = tmp_path / "out"
    spec = ReportSpec(plots=["rewards", "imbalance"])
    html = render_report(root, out, spec, "name: partial\n", "partial").read_text()
    assert "Missing and skipped" in html
    assert f"{runs[0].name} (" in html and "no evaluation results" in html
    assert "unreadable" in html and "missing after data" in html
    assert (
        "missing: no rewards.jsonl" in html and "missing: corruption.desirable_fraction does not vary" in html
    )
    check_self_contained(html, out)
    md = (out / "report.md").read_text()
    assert "| missing |" in md or "| missing" in md


def test_empty_experiment_still_renders(tmp_path):
    (tmp_path / "empty").mkdir()
    html = render_report(
        tmp_path / "empty", tmp_path / "out", ReportSpec(), "name: empty\n", "empty"
    ).read_text()
    assert "no trained runs found" in html and html.count("missing") >= 5


def _chromium() -> str | None:
    return next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)


CHECK_SCRIPT = """<script>
window.addEventListener('load', () => {
  const imgs = [...document.images];
  document.body.setAttribute('data-images', imgs.length);
  document.body.setAttribute('data-decoded', imgs.filter(i => i.complete && i.naturalWidth > 0).length);
  document.body.setAttribute('data-tables', document.querySelectorAll('table').length);
});
</script>"""


@pytest.mark.skipif(
    _chromium() is None, reason="no chromium binary (apt-get install -y chromium chromium-driver)"
)
def test_report_loads_in_headless_chromium(rendered, tmp_path):
    # A copy with a probe script that records, after the load event, how many images the browser decoded.
    probe = tmp_path / "probe.html"
    html = (rendered / "index.html").read_text()
    probe.write_text(html.replace("</body>", CHECK_SCRIPT + "</body>"))
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=5000"]  # fmt: skip
    dom = subprocess.run(
        [_chromium(), *flags, "--dump-dom", probe.as_uri()], capture_output=True, text=True, timeout=120
    ).stdout
    assert "<h1>Report: sweep</h1>" in dom, dom[:500]
    body = re.search(r"<body([^>]*)>", dom).group(1)
    attrs = dict(re.findall(r'data-(\w+)="(\d+)"', body))
    assert attrs == {"images": "5", "decoded": "5", "tables": "6"}, attrs  # 5 report tables + provenance
    check_self_contained(dom, rendered)
    shot = tmp_path / "shot.png"
    subprocess.run(
        [
            _chromium(),
            *flags,
            "--window-size=1280,2000",
            f"--screenshot={shot}",
            (rendered / "index.html").as_uri(),
        ],
        capture_output=True,
        timeout=120,
    )
    assert shot.read_bytes().startswith(b"\x89PNG") and shot.stat().st_size > 20_000
