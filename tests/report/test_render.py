import base64
import html as html_lib
import json
import re
import shutil
import subprocess
from collections import Counter
from html.parser import HTMLParser
from pathlib import Path

import pandas as pd
import pytest

from kto_bench.report import render_report
from kto_bench.spec import ReportSpec
from tests.prereq import missing
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
    for name in ("headline", "claims", "paired", "audit", "training", "audit_methods", "health"):
        for ext in ("md", "csv", "tex", "html"):
            assert (rendered / "tables" / f"{name}.{ext}").stat().st_size > 0, (name, ext)
    for name in ("forest", "bars", "noise", "imbalance", "training", "rewards"):
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
    assert len(imgs) == 6 and all(v.startswith("data:image/png;base64,") for v in imgs)
    assert "script" not in parser.tags and "link" not in parser.tags
    for needle in ("dpo-0-desirable_fraction1.0-flip_rate0.0", "base-tiny", "s" * 16, "abc123", "torch 2.13"):
        assert needle in html, needle
    assert "name: sweep" in html  # the spec text
    for table in ("headline", "claims", "paired", "audit", "training", "audit_methods", "health"):
        assert f'id="table-{table}"' in html
    claims = pd.read_csv(rendered / "tables" / "claims.csv").set_index("claim")
    noise = claims.loc["demo_noise_robustness"]  # DPO drops 20 points, KTO 6: +14 with three seeds per side
    assert noise["estimate"] == pytest.approx(0.14, abs=0.04) and noise["ci_lo"] <= 0.14 <= noise["ci_hi"]
    assert noise["verdict"] == ("reproduced" if noise["p_holm"] < 0.05 else "inconclusive")


def test_sweep_rows_are_per_grid_point(rendered):
    md = (rendered / "tables" / "headline.md").read_text()
    labels = re.findall(r"^\| (\+\w+ \([^)]*\)|base) \|", md, flags=re.M)
    assert labels[0] == "base" and len(labels) == 1 + 3 * 2
    # grouped by method (all DPO rows, then all KTO rows), the reference point first in each group
    assert [lab[:4] for lab in labels[1:]] == ["+DPO"] * 3 + ["+KTO"] * 3
    assert labels[1] == "+DPO (desirable_fraction=1.0, flip_rate=0.0)"
    assert labels[4] == "+KTO (desirable_fraction=1.0, flip_rate=0.0)"


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


# ---------------------------------------------------------------------------------------------- answer first


class Order(HTMLParser):
    """The text of the first h1 and of the block elements in document order."""

    def __init__(self) -> None:
        super().__init__()
        self.blocks: list[tuple[str, str]] = []
        self._open: str | None = None

    def handle_starttag(self, tag, attrs):
        if tag in ("h1", "h2", "p", "li", "figure"):
            self.blocks.append((tag, ""))
            self._open = tag

    def handle_endtag(self, tag):
        if tag == self._open:
            self._open = None

    def handle_data(self, data):
        if self._open and self.blocks:
            tag, text = self.blocks[-1]
            self.blocks[-1] = (tag, text + data)


def test_report_opens_with_the_answer_then_the_forest_plot(rendered):
    html = (rendered / "index.html").read_text()
    order = Order()
    order.feed(html)
    tags = [t for t, _ in order.blocks]
    (h1, title), (p, first) = order.blocks[:2]
    assert h1 == "h1" and "when does KTO beat DPO" in title
    # planted: KTO 10 points above DPO at the reference point, on both benchmarks
    assert p == "p" and first.startswith("KTO − DPO at desirable_fraction=1.0, flip_rate=0.0: "), first
    assert re.search(r"Demo arith \(gen\) EM \+\d+\.\d points \[\+\d+\.\d, \+\d+\.\d\]", first), first
    assert re.search(r"Across 3 grid points on [^:]*Demo arith \(gen\) EM: KTO ahead at 3 \(", html)  # when
    # one sentence per claim, each with its verdict, before any table or curve
    claims = [text for tag, text in order.blocks if tag == "li"][:2]
    assert claims[0].startswith(("reproduced — ", "inconclusive — ", "contradicted — ", "missing — ")), claims
    assert "Measured" in claims[0] and html.index("demo_kto_vs_dpo: ") < html.index("demo_noise_robustness: ")
    forest = html.index("id='plot-forest'")
    assert forest < html.index("id='curves'") < html.index("id='headline'") < html.index("id='provenance'")
    assert html.index("id='table-provenance'") < html.index('id="table-audit"')  # run lists at the end
    assert tags.index("figure") > tags.index("li")
    md = (rendered / "report.md").read_text()
    assert md.splitlines()[2].startswith("KTO − DPO at ") and md.index("![forest]") < md.index("## Curves")
    forest_csv = (rendered / "tables" / "forest.csv").read_text().splitlines()
    assert forest_csv[0].startswith("contrast,point,task,metric,benchmark,scale")
    kinds = Counter(line.split(",")[0] for line in forest_csv[1:])
    # every grid point (3) × benchmark column (3): the method contrast and each method against the base
    assert kinds == {"KTO − DPO": 9, "DPO − base": 9, "KTO − base": 9}


def test_score_dots_do_not_start_the_axis_at_zero(tmp_path, monkeypatch):
    import kto_bench.report.plots as plots
    from kto_bench.report.aggregate import load_experiment

    figures = {}

    def keep(fig, out_dir, name, caption):
        figures[name] = fig
        return plots.PlotResult(name, caption)

    monkeypatch.setattr(plots, "save", keep)
    exp = load_experiment(build(tmp_path / "exp", lambda m, g: {"dpo": 0.55, "kto": 0.6}[m], GRIDS[:1]))
    plots.plot_bars(exp, 0.05, tmp_path)
    axes = [ax for ax in figures["bars"].axes if ax.get_visible()]
    assert len(axes) == 3
    for ax in axes:  # base near 30, methods near 55-60 points: a zoomed axis, not one from 0
        lo, hi = ax.get_xlim()
        assert 10 < lo < 30 < hi < 80, (ax.get_title(), lo, hi)


def test_every_health_row_and_claim_sentence_is_in_the_report(rendered):
    md = (rendered / "report.md").read_text()
    assert "## Did it train? (per-run health check)" in md
    health = (rendered / "tables" / "health.csv").read_text().splitlines()
    assert len(health) == 1 + 3 * 2 * 3 and all(",trained" in line for line in health[1:])
    assert "All 18 checked runs moved from their base model" in md


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_rerendering_an_unchanged_store_is_byte_identical(tmp_path):
    root = build(tmp_path / "sweep", ability, GRIDS)
    spec = ReportSpec()
    first, second = tmp_path / "a", tmp_path / "b"
    render_report(root, first, spec, SPEC_TEXT, "sweep")
    render_report(root, second, spec, SPEC_TEXT, "sweep")
    a, b = _files(first), _files(second)
    assert sorted(a) == sorted(b) and len(a) > 40
    differ = [name for name in a if a[name] != b[name]]
    assert not differ, f"files that changed between two renders of one store: {differ}"
    svg = a["plots/forest.svg"].decode()
    assert "<dc:date>" not in svg and "<svg" in svg
    assert b"tIME" not in a["plots/forest.png"]  # no PNG timestamp chunk


# ---------------------------------------------------------------------------------------------- browser


def _chromium() -> str | None:
    return next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)


PROBE = """<script>
window.addEventListener('load', () => {
  const imgs = [...document.images], root = document.documentElement, b = document.body;
  b.setAttribute('data-images', imgs.length);
  b.setAttribute('data-decoded', imgs.filter(i => i.complete && i.naturalWidth > 0).length);
  b.setAttribute('data-tables', document.querySelectorAll('table').length);
  b.setAttribute('data-scroll-width', root.scrollWidth);
  b.setAttribute('data-client-width', root.clientWidth);
  const first = document.querySelector('h1, h2, h3, p');
  const para = document.querySelector('p');
  b.setAttribute('data-first-block', first.tagName + ': ' + first.textContent);
  b.setAttribute('data-first-paragraph', para ? para.textContent : '');
});
</script>"""
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--virtual-time-budget=5000", "--window-size=1280,900"]  # fmt: skip


def _probe(html: str, tmp_path: Path, name: str) -> dict[str, str]:
    """Loads `html` (with the probe) in headless Chromium at 1280 px; returns the probe's attributes."""
    page = tmp_path / f"{name}.html"
    page.write_text(html.replace("</body>", PROBE + "</body>"))
    dom = subprocess.run(
        [
            _chromium(),
            *FLAGS,
            f"--user-data-dir={tmp_path / ('profile-' + name)}",
            "--dump-dom",
            page.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    ).stdout
    body = re.search(r"<body([^>]*)>", dom)
    assert body, dom[:500]
    attrs = {k: html_lib.unescape(v) for k, v in re.findall(r'data-([\w-]+)="([^"]*)"', body.group(1))}
    assert "scroll-width" in attrs, f"the probe did not run: {dom[:300]}"
    return attrs


def test_committed_demo_report_opens_with_its_answer(tmp_path):
    """The committed demo report as a reader sees it at 1,280 px: the question, then KTO − DPO with its
    interval, the claims' verdicts before any table; nothing overflows the page body (screenshot kept)."""
    if _chromium() is None:
        missing("no chromium binary (apt-get install -y chromium chromium-driver)")
    page = Path(__file__).resolve().parents[2] / "reports" / "demo" / "index.html"
    html = page.read_text()
    shot = tmp_path / "demo-1280.png"
    subprocess.run(
        [_chromium(), *FLAGS[:-1], "--window-size=1280,1400", f"--user-data-dir={tmp_path / 'profile-shot'}",
         f"--screenshot={shot}", page.as_uri()],
        capture_output=True,
        timeout=120,
    )  # fmt: skip
    assert shot.exists() and shot.stat().st_size > 50_000, f"no screenshot at {shot}"
    attrs = _probe(html, tmp_path, "demo")
    where = f"(screenshot: {shot})"
    assert attrs["first-block"] == "H1: demo: when does KTO beat DPO, and by how much?", (attrs, where)
    assert re.match(
        r"KTO − DPO at .*: Demo arith \(gen\) EM strict-match [+-]\d+\.\d points \[", attrs["first-paragraph"]
    ), (
        attrs["first-paragraph"],
        where,
    )
    answer = html[: html.index("<table")]  # everything before the first table
    assert "reproduced" in answer and "demo_kto_vs_dpo" in answer and "forest" in answer, where
    assert int(attrs["scroll-width"]) <= int(attrs["client-width"]), (f"page body overflows {where}", attrs)


def test_report_in_headless_chromium_at_1280px(rendered, tmp_path):
    if _chromium() is None:
        missing("no chromium binary (apt-get install -y chromium chromium-driver)")
    html = (rendered / "index.html").read_text()
    shot = tmp_path / "report-1280.png"
    subprocess.run(
        [_chromium(), *FLAGS[:-1], "--window-size=1280,2400", f"--user-data-dir={tmp_path / 'profile-shot'}",
         f"--screenshot={shot}", (rendered / "index.html").as_uri()],
        capture_output=True,
        timeout=120,
    )  # fmt: skip
    assert shot.exists() and shot.read_bytes().startswith(b"\x89PNG"), f"no screenshot at {shot}"
    attrs = _probe(html, tmp_path, "report")
    where = f"(screenshot: {shot})"
    assert attrs["images"] == attrs["decoded"] == "6", (attrs, where)  # forest + 5 figures, all decoded
    # 5 spec tables, the per-method audit, the health check and provenance
    assert int(attrs["tables"]) == 8, (attrs, where)
    assert int(attrs["scroll-width"]) <= int(attrs["client-width"]), (
        f"page body overflows horizontally {where}: {attrs}"
    )
    assert attrs["first-block"].startswith("H1: sweep: when does KTO beat DPO"), (attrs["first-block"], where)
    assert attrs["first-paragraph"].startswith("KTO − DPO at "), (attrs["first-paragraph"], where)
    assert shot.stat().st_size > 50_000, where
    # the overflow check can fail: the same page without the tables' own scroll containers overflows
    unwrapped = html.replace(".table-wrap{max-width:100%;overflow-x:auto;", ".table-wrap{")
    assert unwrapped != html
    control = _probe(unwrapped, tmp_path, "control")
    assert int(control["scroll-width"]) > int(control["client-width"]), control
