"""GX Data Docs built from a real lake's `_quality` table work offline: no file of the site makes
a browser fetch anything from another host, building them touches no network, and in headless
chromium (which may not resolve any host name) the index lists every batch and a batch page shows
its pass/fail icons, the GX version and the data asset, styled by the site's own stylesheet."""

from __future__ import annotations

import ipaddress
import json
import re
import shutil
import socket
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from tidegate.catalog import Catalog
from tidegate.expectations.contracts import ContractRegistry
from tidegate.expectations.envelope import RawMessage
from tidegate.lake.read import Lake
from tidegate.ops.docs import DocsBuild, build_docs, quality_rows
from tidegate.pipelines.local.batch import BatchRunner
from tidegate.pipelines.runs import new_run_id
from tidegate.producer import ProduceConfig, generate
from tidegate.transforms.base import IngestConfig

RUN = new_run_id()  # run-<start time>-<6 hex>, as a real ingest
CHROMIUM = shutil.which("chromium")
PASS_RGB, FAIL_RGB = (30, 142, 62), (217, 48, 37)  # --ok and --bad of the site's stylesheet
HEADER_RGB = (238, 240, 243)  # .alert-secondary: only there when the local stylesheet applied


@dataclass
class Site:
    build: DocsBuild
    rows: list[dict[str, Any]]
    network: list[str]

    @property
    def root(self) -> Path:
        return self.build.index.parent

    def groups(self) -> dict[tuple[str, str], list[dict[str, Any]]]:
        out: dict[tuple[str, str], list[dict[str, Any]]] = {}
        for r in self.rows:
            out.setdefault((r["batch_id"], r["event_type"]), []).append(r)
        return out

    def page(self, batch_id: str, event_type: str) -> Path:
        suite = event_type.replace(".", "_")
        (page,) = (self.root / "validations" / suite / RUN).glob(f"*/{batch_id}.html")
        return page


def _ingest(catalog: Catalog, registry: ContractRegistry, lake: Path) -> None:
    """Three batches of every event type, with faults the suites catch, through the real
    micro-batch runner (Beam composites, Delta writes, GX): it writes raw, quarantine, _quality."""
    subscription = {t: s.subscription for s in catalog.streams for t in s.event_types}
    runner = BatchRunner(IngestConfig(str(lake), RUN, str(catalog.path), "t", "t"), sleep=lambda s: None)
    for seq, seed in enumerate((5, 6, 7), start=1):
        config = ProduceConfig(types=tuple(catalog.event_types), count=60, seed=seed, invalid_rate=0.3)
        messages = [
            RawMessage(
                m.data,
                m.attributes,
                str(i),
                datetime.now(UTC),
                subscription.get(m.attributes.get("ce-type", ""), catalog.streams[0].subscription),
            )
            for i, m in enumerate(generate(config, catalog, registry))
        ]
        runner.run(f"{RUN}-{seq:06d}", messages)


@pytest.fixture(scope="module")
def site(catalog: Catalog, registry: ContractRegistry, tmp_path_factory: pytest.TempPathFactory) -> Site:
    tmp = tmp_path_factory.mktemp("data-docs")
    _ingest(catalog, registry, tmp / "lake")
    lake = Lake(str(tmp / "lake"), catalog=catalog)
    rows = quality_rows(lake, RUN, 200)
    with _LoopbackOnly() as attempts:
        built = build_docs(lake, tmp / "docs", rows)
    return Site(built, rows, attempts)


@pytest.fixture(scope="module")
def mixed(site: Site) -> tuple[str, str]:
    """A (batch, event type) whose page has passed and failed expectations."""
    for key, outcomes in sorted(site.groups().items()):
        if {bool(o["success"]) for o in outcomes} == {True, False}:
            return key
    raise AssertionError("the generated faults gave no batch with both passed and failed expectations")


# ---- (a) nothing fetched from another host, nothing sent anywhere ----


@pytest.fixture(scope="module")
def references(site: Site) -> list[tuple[Path, str, str]]:
    """(file, what, reference) for everything a browser would load from the site's files (plus
    the local links, to check they resolve)."""
    refs: list[tuple[Path, str, str]] = []
    for path in sorted(site.root.rglob("*")):
        if path.suffix in {".html", ".svg"}:
            parser = _References()
            parser.feed(path.read_text(encoding="utf-8", errors="replace"))
            refs += [(path, what, ref) for what, ref in parser.refs]
        elif path.suffix == ".css":
            refs += [(path, "css", ref) for ref in _css_refs(path.read_text(encoding="utf-8"))]
    return refs


def test_building_the_docs_touches_no_network(site: Site) -> None:
    assert site.network == []
    assert site.build.batches == len({r["batch_id"] for r in site.rows}) == 3


def test_no_file_of_the_site_makes_a_browser_fetch_from_another_host(
    site: Site, references: list[tuple[Path, str, str]]
) -> None:
    fetched = [(p, w, r) for p, w, r in references if w != "a"]
    assert len(fetched) > 10  # stylesheet, logo, favicon on every page: the parser saw them
    remote = [(str(p.relative_to(site.root)), w, r) for p, w, r in fetched if not _is_local(r)]
    assert remote == []
    assert not [r for p, w, r in references if w == "a" and not _is_local(r)]  # no way out by a click
    for path in site.root.rglob("*.html"):
        text = path.read_text(encoding="utf-8")
        assert "<script" not in text.lower(), path  # works without any script, local or not
        for leak in ("dataContextId", "utm_", "great-expectations-web-assets", "cdn"):
            assert leak not in text, (path, leak)


def test_the_site_identifies_nothing_on_the_way_out(site: Site) -> None:
    """GX's data context id (GX's logo URL carried it) appears in no file of the site."""
    config = (site.root.parents[2] / "great_expectations.yml").read_text()
    ids = re.findall(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", config)
    ids += re.findall(r"data_context_id:\s*(\S+)", config)
    text = "\n".join(p.read_text(errors="replace") for p in site.root.rglob("*") if p.is_file())
    assert not [i for i in ids if i in text]


def test_every_local_reference_resolves_to_a_file_of_the_site(
    site: Site, references: list[tuple[Path, str, str]]
) -> None:
    missing = []
    for path, what, ref in references:
        target = ref.split("#")[0].split("?")[0]
        if not _is_local(ref) or not target or ref.startswith("data:"):
            continue
        if not (path.parent / target).resolve().is_file():
            missing.append((str(path.relative_to(site.root)), what, ref))
    assert missing == []
    assert (site.root / "static" / "styles" / "tidegate.css").is_file()


def test_every_batch_and_event_type_has_its_page(site: Site) -> None:
    for batch_id, event_type in site.groups():
        assert site.page(batch_id, event_type).is_file()
    pages = list((site.root / "validations").rglob("*.html"))
    assert len(pages) == len(site.groups())


def test_a_rebuild_shows_exactly_the_rows_it_was_given(site: Site, tmp_path: Path, catalog: Catalog) -> None:
    """GX's stores accumulate; the docs are rebuilt from the lake: nothing of the last build stays."""
    out = tmp_path / "docs"
    shutil.copytree(site.root.parents[3], out)  # <out>/gx/uncommitted/data_docs/local_site
    (batch_id, _), *_ = sorted(site.groups())
    rows = [r for r in site.rows if r["batch_id"] == batch_id]
    rebuilt = build_docs(Lake("unused", catalog=catalog), out, rows)
    pages = sorted(p.name for p in (rebuilt.index.parent / "validations").rglob("*.html"))
    assert pages == [f"{batch_id}.html"] * len({r["event_type"] for r in rows})
    assert rebuilt.batches == 1


def test_the_last_pass_drops_whatever_a_browser_would_fetch_from_another_host() -> None:
    """The safety net behind the templates, should a GX renderer still emit a remote asset."""
    from tidegate.expectations.data_docs import _local_only

    page = (
        '<head><link rel="stylesheet" href="https://cdn.example/b.css"><script src="//cdn.example/j.js">'
        "</script><style>a{background:url('https://x.example/l.png')} @import \"https://x.example/i.css\";"
        '</style></head><body style="background:url(http://x.example/bg.png)">'
        '<img src="https://x.example/logo.png?id=1"><img src="static/images/logo-long.png">'
        "<span>values must match ^https?://</span></body>"
    )
    local = _local_only(page, css=False)
    assert [r for r in _page_refs(local) if not _is_local(r)] == []
    assert 'src="static/images/logo-long.png"' in local
    assert "values must match ^https?://" in local  # the text is left alone
    assert _local_only("a{b:url('https://x.example/f.woff')}", css=True) == "a{b:none}"


# ---- (b) what a browser shows, with no name resolution at all ----


needs_chromium = pytest.mark.skipif(
    CHROMIUM is None, reason="Debian's chromium is not installed (.ci/run installs it)"
)


@needs_chromium
def test_the_index_lists_every_batch_in_a_browser_without_network(site: Site, tmp_path: Path) -> None:
    dom, requests = _dump_dom(site.build.index, tmp_path)
    assert requests == []  # the page asked the network for nothing
    links = _Links()
    links.feed(dom)
    listed = {(t, href) for t, href, cls in links.links if href.startswith("validations/")}
    groups = site.groups()
    assert sorted(t for t, _ in listed) == sorted(b for b, _ in groups)  # one row per batch and type
    for _, href in listed:
        assert (site.root / href).is_file()
    text = _text(dom)
    assert "Validation Results" in text
    assert RUN in text
    for _, event_type in groups:
        assert event_type in text  # the asset name column
    statuses = {all(o["success"] for o in outcomes) for outcomes in groups.values()}
    for width in (1280, 640):
        pixels = _screenshot(site.build.index, tmp_path / f"index-{width}.png", width)
        assert (_painted(pixels, PASS_RGB) > 50) == (True in statuses), width  # a batch passed
        assert (_painted(pixels, FAIL_RGB) > 50) == (False in statuses), width  # one failed


@needs_chromium
def test_a_batch_page_shows_pass_and_fail_icons_the_gx_version_and_the_data_asset(
    site: Site, mixed: tuple[str, str], tmp_path: Path
) -> None:
    import great_expectations as gx

    batch_id, event_type = mixed
    page = site.page(batch_id, event_type)
    dom, requests = _dump_dom(page, tmp_path)
    assert requests == []
    icons = _Icons()
    icons.feed(dom)
    outcomes = site.groups()[mixed]
    passed = sum(1 for o in outcomes if o["success"])
    # one icon per expectation, plus the page's overall status (failed: one expectation failed)
    assert icons.labels.count("passed") == passed
    assert icons.labels.count("failed") == len(outcomes) - passed + 1
    text = _text(dom)
    assert f"Great Expectations Version {gx.__version__}" in text
    assert f"Data asset: {event_type}" in text
    assert f"Run Name {RUN}" in text
    assert batch_id in text
    for width in (1280, 640):
        pixels = _screenshot(page, tmp_path / f"batch-{width}.png", width, height=2400)  # a long page
        assert _painted(pixels, PASS_RGB) > 50, width  # the icons were drawn, in their colours
        assert _painted(pixels, FAIL_RGB) > 50, width
        assert _painted(pixels, HEADER_RGB) > 5000, width  # styled by the local stylesheet


# ---- helpers ----


class _LoopbackOnly:
    """Refuses (and records) any connection or name lookup that would leave this machine."""

    def __init__(self) -> None:
        self.attempts: list[str] = []
        self._patch = pytest.MonkeyPatch()

    def __enter__(self) -> list[str]:
        real_connect = socket.socket.connect
        real_getaddrinfo = socket.getaddrinfo
        attempts = self.attempts

        def local(host: Any) -> bool:
            if host in (None, "", "localhost"):
                return True
            try:
                return ipaddress.ip_address(str(host).split("%")[0]).is_loopback
            except ValueError:
                return False

        def connect(sock: socket.socket, address: Any) -> None:
            if sock.family in (socket.AF_INET, socket.AF_INET6) and not local(address[0]):
                attempts.append(f"connect {address}")
                raise OSError("tests/test_data_docs.py: no network")
            real_connect(sock, address)

        def getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
            if not local(host):
                attempts.append(f"resolve {host}")
                raise socket.gaierror("tests/test_data_docs.py: no network")
            return real_getaddrinfo(host, *args, **kwargs)

        self._patch.setattr(socket.socket, "connect", connect)
        self._patch.setattr(socket, "getaddrinfo", getaddrinfo)
        return attempts

    def __exit__(self, *exc: object) -> None:
        self._patch.undo()


_CSS_URL = re.compile(r"""url\(\s*(['"]?)([^'")]*)\1\s*\)|@import\s+(['"])([^'"]+)\3""", re.I)


def _css_refs(css: str) -> Iterator[str]:
    for m in _CSS_URL.finditer(css):
        yield (m.group(2) or m.group(4) or "").strip()


class _References(HTMLParser):
    """What a page loads: src/srcset/poster/data of any element, every <link href> (stylesheet,
    icon, preload...), SVG <image>/<use> hrefs, url()/@import in <style> and style="", a meta
    refresh; and <a href> (not fetched, collected as "a")."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.refs: list[tuple[str, str]] = []
        self._style = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k.lower(): (v or "") for k, v in attrs}
        for name in ("src", "poster", "data", "background"):
            if a.get(name):
                self.refs.append((f"{tag}[{name}]", a[name]))
        for candidate in a.get("srcset", "").split(","):
            if candidate.strip():
                self.refs.append((f"{tag}[srcset]", candidate.split()[0]))
        if tag == "link" and a.get("href"):
            self.refs.append((f"link[{a.get('rel', '')}]", a["href"]))
        if tag in ("image", "use", "feimage", "script") and (a.get("href") or a.get("xlink:href")):
            self.refs.append((tag, a.get("href") or a["xlink:href"]))
        if tag == "meta" and "url=" in a.get("content", "").lower():
            self.refs.append(("meta", a["content"].lower().split("url=", 1)[1]))
        if tag == "a" and a.get("href"):
            self.refs.append(("a", a["href"]))
        self.refs += [("style=", ref) for ref in _css_refs(a.get("style", ""))]
        self._style = tag == "style"

    def handle_endtag(self, tag: str) -> None:
        self._style = False

    def handle_data(self, data: str) -> None:
        if self._style:
            self.refs += [("<style>", ref) for ref in _css_refs(data)]


def _page_refs(html: str) -> list[str]:
    parser = _References()
    parser.feed(html)
    return [ref for _, ref in parser.refs]


def _is_local(ref: str) -> bool:
    """A relative path, a fragment or inline data: nothing that names another host."""
    ref = ref.strip()
    if ref.startswith("//"):
        return False
    scheme = re.match(r"([a-zA-Z][a-zA-Z0-9+.-]*):", ref)
    return scheme is None or scheme.group(1).lower() == "data"


class _Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.links: list[tuple[str, str, str]] = []
        self._open: list[tuple[str, str, list[str]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "a":
            a = dict(attrs)
            self._open.append((a.get("href") or "", a.get("class") or "", []))

    def handle_data(self, data: str) -> None:
        for _, _, parts in self._open:
            parts.append(data)

    def handle_endtag(self, tag: str) -> None:
        if tag == "a" and self._open:
            href, cls, parts = self._open.pop()
            self.links.append((" ".join("".join(parts).split()), href, cls))


class _Icons(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.labels: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "svg" and a.get("role") == "img":
            self.labels.append(a.get("aria-label") or "")


class _Text(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self._skip = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self._skip += tag in ("style", "script", "title", "svg")

    def handle_endtag(self, tag: str) -> None:
        self._skip -= tag in ("style", "script", "title", "svg") and self._skip > 0

    def handle_data(self, data: str) -> None:
        if not self._skip:
            self.parts.append(data)


def _text(dom: str) -> str:
    parser = _Text()
    parser.feed(dom)
    return " ".join(" ".join(parser.parts).split())


def _chromium(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    flags = [
        CHROMIUM or "chromium",
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--host-resolver-rules=MAP * ~NOTFOUND",  # a CDN link left behind would fail, not leak
        f"--user-data-dir={tmp_path / 'profile'}",
        "--hide-scrollbars",
    ]
    return subprocess.run([*flags, *args], check=True, capture_output=True, text=True, timeout=120)


def _dump_dom(page: Path, tmp_path: Path) -> tuple[str, list[str]]:
    """The DOM after load, and every network request the page itself made (chromium's NetLog:
    requests whose initiator is the page; chromium's own housekeeping has none)."""
    log = tmp_path / f"netlog-{page.stem}.json"
    dom = _chromium(tmp_path, f"--log-net-log={log}", "--dump-dom", page.as_uri()).stdout
    netlog = json.loads(log.read_text())
    start = netlog["constants"]["logEventTypes"]["URL_REQUEST_START_JOB"]
    requests = [
        e["params"]["url"]
        for e in netlog["events"]
        if e["type"] == start
        and "url" in e.get("params", {})
        and e["params"].get("initiator", "not an origin") != "not an origin"
    ]
    return dom, requests


def _screenshot(page: Path, shot: Path, width: int, height: int = 900) -> Any:
    from matplotlib.image import imread

    _chromium(shot.parent, f"--window-size={width},{height}", f"--screenshot={shot}", page.as_uri())
    return (imread(shot)[:, :, :3] * 255).astype(int)


def _painted(pixels: Any, rgb: tuple[int, int, int]) -> int:
    import numpy as np

    return int((np.abs(pixels - np.array(rgb)).sum(axis=2) < 30).sum())
