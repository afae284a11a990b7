"""GX Data Docs (static HTML) from the results stored in `<lake>/_quality` (`tidegate docs`).

Each (batch, event type) of the `_quality` table becomes one GX validation result, built with
GX's own classes from the stored per-expectation outcomes and the expectation's configuration in
the suite (`tidegate/expectations/contracts/<type>/suite.json`), put into a file-based GX context's
validation store next to the suites, and rendered by GX (`build_data_docs`). Nothing is
re-validated: the docs show what ingestion found at the time. In GX's terms the run is the ingest
run (`run_id`), the batch is tidegate's batch (`batch_id`) and the data asset is the event type.

Offline and complete: GX's own renderers write the content, through GX views whose page templates
are replaced here (`_TEMPLATES`): no CDN stylesheet or script, no remote logo (GX's carries the data
context id in its URL), no newsletter footer. The index lists every validation as server-rendered
HTML, "show more info" is a `<details>`, "failed only" is a CSS toggle, and pass/fail icons are
inline SVG; one local stylesheet (`static/styles/tidegate.css`) styles the pages. A last pass drops
any reference a browser would fetch from another host, should a GX renderer still emit one.
Nothing is downloaded, at build time or when the pages are opened.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any

import great_expectations as gx
from great_expectations.core import ExpectationSuite
from great_expectations.core.expectation_validation_result import (
    ExpectationSuiteValidationResult,
    ExpectationValidationResult,
)
from great_expectations.core.run_identifier import RunIdentifier
from great_expectations.data_context.types.resource_identifiers import (
    ExpectationSuiteIdentifier,
    ValidationResultIdentifier,
)
from great_expectations.expectations.expectation_configuration import ExpectationConfiguration
from great_expectations.render.view.view import DefaultJinjaIndexPageView, DefaultJinjaPageView
from jinja2 import BaseLoader, ChoiceLoader, DictLoader

from tidegate.expectations.contracts import ContractRegistry
from tidegate.expectations.suites import load_suite_dict

SITE = "local_site"
STYLESHEET = "static/styles/tidegate.css"


def _suite_name(event_type: str) -> str:
    return event_type.replace(".", "_")  # GX's file store splits names on dots


def build_data_docs(rows: list[dict[str, Any]], registry: ContractRegistry, out: Path) -> Path:
    """Render `_quality` rows (dicts) into GX Data Docs under `out`; returns index.html.

    The site shows exactly these rows: what an earlier build left under `out/gx` is replaced."""
    project = out / "gx"
    site = project / "uncommitted" / "data_docs" / SITE
    for derived in (project / "uncommitted" / "validations", project / "expectations", site):
        shutil.rmtree(derived, ignore_errors=True)  # GX's stores accumulate: start from the lake
    out.mkdir(parents=True, exist_ok=True)
    context = gx.get_context(mode="file", project_root_dir=str(out))
    context.variables.data_docs_sites = {SITE: _site_config()}
    context.enable_analytics(False)  # saves the variables too

    configs: dict[tuple[str, str, str | None], dict[str, Any]] = {}
    for event_type, contracts in registry.types.items():
        if contracts.suite_path is None:
            continue
        doc = load_suite_dict(contracts.suite_path)
        for e in doc.get("expectations", []):
            configs[(event_type, e["type"], e.get("kwargs", {}).get("column"))] = e
        context.suites.add(_suite(doc, _suite_name(event_type)))  # its page: the rules, current version

    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["batch_id"], r["event_type"]), []).append(r)
    for (batch_id, event_type), outcomes in sorted(groups.items()):
        key, result = _validation(batch_id, event_type, outcomes, configs)
        context.validation_results_store.set(key, result)
    context.build_data_docs(site_names=[SITE])
    _finish_site(site)
    return site / "index.html"


def _site_config() -> dict[str, Any]:
    views = "tidegate.expectations.data_docs"
    return {
        "class_name": "SiteBuilder",
        "show_how_to_buttons": False,
        "store_backend": {
            "class_name": "TupleFilesystemStoreBackend",
            "base_directory": f"uncommitted/data_docs/{SITE}/",
        },
        "site_index_builder": {
            "class_name": "DefaultSiteIndexBuilder",
            "view": {"module_name": views, "class_name": "OfflineIndexPageView"},
        },
        "site_section_builders": {
            "expectations": {"view": {"module_name": views, "class_name": "OfflinePageView"}},
            "validations": {"view": {"module_name": views, "class_name": "OfflinePageView"}},
            "profiling": "None",
        },
    }


def _suite(doc: dict[str, Any], name: str) -> ExpectationSuite:
    doc = {**doc, "name": name, "expectations": [dict(e) for e in doc.get("expectations", [])]}
    doc.pop("id", None)
    for e in doc["expectations"]:
        e.pop("id", None)
    return ExpectationSuite(**doc)


def _validation(
    batch_id: str,
    event_type: str,
    outcomes: list[dict[str, Any]],
    configs: dict[tuple[str, str, str | None], dict[str, Any]],
) -> tuple[ValidationResultIdentifier, ExpectationSuiteValidationResult]:
    results = []
    for o in outcomes:
        conf = configs.get((event_type, o["expectation"], o["column"]))
        kwargs = dict(conf["kwargs"]) if conf else ({"column": o["column"]} if o["column"] else {})
        results.append(
            ExpectationValidationResult(
                success=bool(o["success"]),
                expectation_config=ExpectationConfiguration(type=o["expectation"], kwargs=kwargs),
                result={
                    "element_count": int(o["element_count"]),
                    "unexpected_count": int(o["unexpected_count"]),
                    "unexpected_percent": float(o["unexpected_percent"]),
                    "missing_count": 0,
                },
            )
        )
    passed = sum(1 for o in outcomes if o["success"])
    first = outcomes[0]
    when = first["validated_at"]
    run = RunIdentifier(run_name=str(first["run_id"]), run_time=when)
    suite = _suite_name(event_type)
    batch_spec = {
        "data_asset_name": event_type,
        "batch_id": batch_id,
        "run_id": first["run_id"],
        "suite_fingerprint": first.get("suite_fingerprint"),
        "source": "the lake's _quality table, as stored by the ingest run",
    }
    result = ExpectationSuiteValidationResult(
        success=passed == len(outcomes),
        results=results,
        suite_name=suite,
        statistics={
            "evaluated_expectations": len(outcomes),
            "successful_expectations": passed,
            "unsuccessful_expectations": len(outcomes) - passed,
            "success_percent": 100.0 * passed / len(outcomes),
        },
        meta={
            "run_id": run,
            "great_expectations_version": gx.__version__,
            "batch_spec": batch_spec,
            "tidegate_run_id": first["run_id"],
            "suite_fingerprint": first.get("suite_fingerprint"),
        },
    )
    return ValidationResultIdentifier(ExpectationSuiteIdentifier(name=suite), run, batch_id), result


# ---- views: GX's renderers and templates, with the page shell and the scripted parts replaced ----


def _root(document: Any) -> str:
    """The site root relative to the page being rendered (GX's own layout of the site)."""
    fields: dict[str, Any] = document if isinstance(document, dict) else vars(document)
    kind = str(fields.get("renderer_type") or "")
    dots = str(fields.get("expectation_suite_name") or "").count(".")
    if "ValidationResults" in kind or "ProfilingResults" in kind:
        return "../" * (dots + 4)  # validations/<suite...>/<run>/<time>/<batch>.html
    if "ExpectationSuite" in kind:
        return "../" * (dots + 1)  # expectations/<suite...>.html
    return ""


_PAGE = """<!DOCTYPE html>
<html lang="en">
  <head>
    <meta charset="UTF-8">
    <meta name="viewport" content="width=device-width, initial-scale=1.0">
    <title>{{ page_title or "Data Docs" }} · Great Expectations</title>
    <link rel="stylesheet" href="{{ tg_root }}static/styles/tidegate.css">
    <link rel="icon" href="{{ tg_root }}static/images/favicon.ico" type="image/x-icon">
  </head>
  <body>
    {% include 'top_navbar.j2' %}
    <div class="container-fluid tg-main">
      <div class="row">
        {% include 'sidebar.j2' %}
        <main class="col-md-10 col-lg-10 col-12 tg-content">
          {% for section in sections %}
            {% set section_loop = loop -%}
            {% include 'section.j2' %}
          {% endfor %}
        </main>
      </div>
    </div>
  </body>
</html>
"""

_TEMPLATES: dict[str, str] = {
    "page.j2": _PAGE,
    # the index has no table of contents: its tables get the whole width
    "index_page.j2": _PAGE.replace("{% include 'sidebar.j2' %}", "")
    .replace("col-md-10 col-lg-10 col-12 tg-content", "col-12 tg-content tg-index")
    .replace("{% for section in sections %}", "{% include 'ge_info.j2' %}\n{% for section in sections %}"),
    "js_script_imports.j2": "",
    "cloud-footer.j2": "",
    "cta_footer.j2": "",
    "favicon.j2": '<link rel="icon" href="{{ tg_root }}static/images/favicon.ico" type="image/x-icon">',
    "top_navbar.j2": """
<nav class="tg-navbar">
  <a class="tg-brand" href="{{ tg_root }}index.html">
    <img src="{{ tg_root }}static/images/logo-long.png" alt="Great Expectations" width="183" height="40">
  </a>
  {% if page_title %}
    <ol class="breadcrumb ge-breadcrumbs">
      <li class="breadcrumb-item ge-breadcrumbs-item"><a href="{{ tg_root }}index.html">Home</a></li>
      <li class="breadcrumb-item ge-breadcrumbs-item active" aria-current="page">{{ page_title }}</li>
    </ol>
  {% endif %}
</nav>
""",
    "ge_info.j2": """
<div class="mb-4">
  {% if renderer_type == "ValidationResultsPageRenderer" %}
    <h4>Expectation Validation Result</h4>
    <p class="lead">Evaluates whether a batch of data matches expectations.</p>
  {% elif renderer_type == "ExpectationSuitePageRenderer" %}
    <h4>Expectation Suite</h4>
    <p class="lead">A collection of Expectations defined for batches of data.</p>
  {% else %}
    <p>Data Docs built by tidegate from the lake's <code>_quality</code> table, rendered by
      Great Expectations {{ ge_version }}. Offline: every asset is a local file.</p>
  {% endif %}
</div>
""",
    "page_action_card.j2": """
<div class="card mb-3 tg-filter">
  <div class="card-header p-2"><strong>Actions</strong></div>
  <div class="card-body p-3">
    <p class="mb-1">Validation Filter:</p>
    <div class="tg-toggle" role="radiogroup">
      <label><input type="radio" name="tg-filter" id="tg-show-all" checked> Show All</label>
      <label><input type="radio" name="tg-filter" id="tg-failed-only"> Failed Only</label>
    </div>
  </div>
</div>
""",
    # tabs need bootstrap's script: every tab is a section of the page, one after the other
    "tabs.j2": """
{% include 'content_block_header.j2' %}
<div id="{{ content_block_id }}-tabs-container" class="tg-tabs">
  {% for tab in content_block["tabs"] %}
    {% set tab_id = tab.get('tab_name', '').strip().replace(' ', '-') %}
    <section id="{{ tab_id }}" class="tg-tab">
      <h5 class="tg-tab-title">{{ tab.get('tab_name', '') }}</h5>
      {{ tab.get("tab_content") | render_content_block(content_block_id=content_block_id ~ '-' ~ loop.index) }}
    </section>
  {% endfor %}
</div>
""",
    "collapse.j2": """
{% set collapse_toggle_link = content_block.get("collapse_toggle_link", "Show more...") %}
<details id="{{ content_block_id }}-parent" class="tg-collapse" open>
  <summary>{{ collapse_toggle_link | render_content_block }}</summary>
  <div class="card card-body m-2">
    {% set content_block_body_styling = "" %}
    {% include 'content_block_header.j2' %}
    {% for block in content_block["collapse"] %}
      {% set content_block_id = content_block_id ~ "-collapse-item-" ~ loop.index %}
      {{ block | render_content_block(content_block_id=content_block_id) }}
    {% endfor %}
  </div>
</details>
""",
    # the index's tables: rendered here, not by bootstrap-table in the browser
    "bootstrap_table.j2": """
{% include 'content_block_header.j2' %}
{% if "styling" in content_block and "body" in content_block["styling"] -%}
  {% set body_styling = content_block["styling"]["body"] | render_styling -%}
{% else -%}
  {% set body_styling = "" -%}
{% endif -%}
{% set columns = content_block["table_columns"] %}
{% set fields = columns | map(attribute="field") | list %}
{% set link_field = "batch_identifier" if "batch_identifier" in fields else fields[0] %}
{% set rows = content_block["table_data"] | render_bootstrap_table_data %}
{% if rows and "_run_time_sort" in rows[0] %}
  {% set rows = rows | sort(attribute="_run_time_sort", reverse=True) %}
{% elif rows %}
  {% set rows = rows | sort(attribute=fields[0]) %}
{% endif %}
<div class="table-responsive">
<table id="{{ content_block_id }}-body-table" {{ body_styling | replace("{{section_id}}", section_id) | replace("{{content_block_id}}", content_block_id) }}>
  <thead><tr>{% for c in columns %}<th class="tg-col-{{ c['field'] }}">{{ c["title"] }}</th>{% endfor %}</tr></thead>
  <tbody>
  {% for row in rows %}
    <tr>{% for c in columns %}<td class="tg-col-{{ c['field'] }}">
      {%- if c["field"] == link_field and row.get("_table_row_link_path") -%}
        {#- the plain value (GX's sort key) rather than GX's hover box around it -#}
        <a class="tg-row-link" href="{{ row['_table_row_link_path'] }}">{{ row.get("_" ~ c["field"] ~ "_sort") or row.get(c["field"]) or "" }}</a>
      {%- else -%}
        {{ row.get(c["field"]) or "" }}
      {%- endif -%}
    </td>{% endfor %}</tr>
  {% else %}
    <tr><td colspan="{{ columns | length }}">Nothing to show.</td></tr>
  {% endfor %}
  </tbody>
</table>
</div>
""",
    "graph.j2": """
{% include 'content_block_header.j2' %}
<p class="text-muted">(A chart is not drawn here: it needs a charting script these offline pages do not load.)</p>
""",
}


def _svg(label: str, cls: str, body: str) -> str:
    return (
        f'<svg class="{cls} tg-icon" viewBox="0 0 16 16" role="img" aria-label="{label}">'
        f"<title>{label}</title>{body}</svg>"
    )


_ICON_SHAPES = {
    "fa-check-circle": (
        "passed",
        '<circle cx="8" cy="8" r="8" fill="currentColor"/><path d="M4.4 8.3l2.4 2.4 4.8-5.1" '
        'fill="none" stroke="#fff" stroke-width="1.9" stroke-linecap="round" stroke-linejoin="round"/>',
    ),
    "fa-times": (
        "failed",
        '<circle cx="8" cy="8" r="8" fill="currentColor"/><path d="M5.3 5.3l5.4 5.4M10.7 5.3l-5.4 5.4" '
        'fill="none" stroke="#fff" stroke-width="1.9" stroke-linecap="round"/>',
    ),
    "fa-exclamation-triangle": (
        "warning",
        '<path d="M8 1l7.5 13.5h-15z" fill="currentColor"/><path d="M8 6v4" stroke="#fff" '
        'stroke-width="1.8" stroke-linecap="round"/><circle cx="8" cy="12.3" r="1" fill="#fff"/>',
    ),
    "fa-question-circle": (
        "help",
        '<circle cx="8" cy="8" r="7.2" fill="none" stroke="currentColor" stroke-width="1.5"/>'
        '<text x="8" y="11.6" text-anchor="middle" font-size="10" font-weight="700" fill="currentColor">?</text>',
    ),
    "fa-comment": (
        "note",
        '<path d="M2 2.5h12v8.5h-7l-3.5 3v-3h-1.5z" fill="currentColor"/>',
    ),
}
_ICON = re.compile(r'<i\s+class="(?P<cls>[^"]*\bfa-[^"]*)"[^>]*>\s*</i>')


def _icon(match: re.Match[str]) -> str:
    cls = match.group("cls")
    for name, (label, body) in _ICON_SHAPES.items():
        if re.search(rf"\b{name}\b", cls):
            return _svg(label, cls, body)
    return '<span class="tg-icon-dot" aria-hidden="true">•</span>'


class OfflinePageView(DefaultJinjaPageView):
    """GX's page view with the templates above first in line and icons drawn as inline SVG."""

    def __init__(self, custom_styles_directory: str | None = None, custom_views_directory: str | None = None):
        super().__init__(custom_styles_directory, custom_views_directory)
        packaged: BaseLoader | None = self.env.loader
        self.env.loader = ChoiceLoader([DictLoader(_TEMPLATES), *([packaged] if packaged else [])])

    def render(self, document: Any, template: Any = None, **kwargs: Any) -> str:
        html = super().render(document, template, tg_root=_root(document), **kwargs)  # type: ignore[no-untyped-call]
        return _ICON.sub(_icon, str(html))


class OfflineIndexPageView(OfflinePageView, DefaultJinjaIndexPageView):
    _template = "index_page.j2"


# ---- the site after GX: our stylesheet, and nothing fetched from another host ----

_REMOTE = r"""(?:[a-z][a-z0-9+.-]*:)?//"""  # http://, https://, //host: anything not on this disk
_REMOTE_ELEMENT = re.compile(
    rf"""<script\b[^>]*\bsrc\s*=\s*["']?{_REMOTE}[^>]*>\s*</script\s*>"""
    rf"""|<(?:link|img|source|iframe|embed)\b[^>]*\b(?:src|href|srcset)\s*=\s*["']?{_REMOTE}[^>]*>""",
    re.I,
)
_REMOTE_CSS = re.compile(
    rf"""@import\s+(?:url\()?\s*["']?{_REMOTE}[^;]*;|url\(\s*["']?{_REMOTE}[^)]*\)""", re.I
)
_CSS_IN_HTML = re.compile(r"""(<style\b[^>]*>)(.*?)(</style\s*>)|(\bstyle\s*=\s*")([^"]*)(")""", re.I | re.S)


def _local_css(css: str) -> str:
    return _REMOTE_CSS.sub(lambda m: "" if m.group(0).startswith("@") else "none", css)


def _local_only(text: str, css: bool) -> str:
    """`text` without what a browser would fetch from another host: remote scripts, stylesheets,
    images, frames (elements dropped), remote url()/@import in CSS (in a stylesheet, a <style> or
    a style attribute; the pages' text is left alone)."""
    if css:
        return _local_css(text)
    text = _REMOTE_ELEMENT.sub("", text)
    return _CSS_IN_HTML.sub(
        lambda m: "".join(
            (m.group(i) or "") if i not in (2, 5) else _local_css(m.group(i) or "") for i in range(1, 7)
        ),
        text,
    )


def _finish_site(site: Path) -> None:
    (site / STYLESHEET).parent.mkdir(parents=True, exist_ok=True)
    (site / STYLESHEET).write_text(_css(), encoding="utf-8")
    for path in site.rglob("*"):
        if path.suffix in {".html", ".css"}:
            text = path.read_text(encoding="utf-8")
            local = _local_only(text, css=path.suffix == ".css")
            if local != text:
                path.write_text(local, encoding="utf-8")


def _spacing() -> str:
    """Bootstrap 4's spacing utilities (m-0 ... p-5, ml-1, px-0, pl-md-4, ...) that GX's markup uses."""
    sizes = ["0", ".25rem", ".5rem", "1rem", "1.5rem", "3rem"]
    sides: dict[str, tuple[str, ...]] = {
        "": ("",),
        "t": ("-top",),
        "b": ("-bottom",),
        "l": ("-left",),
        "r": ("-right",),
    }
    sides |= {"x": ("-left", "-right"), "y": ("-top", "-bottom")}
    out = []
    for bp, width in (("", 0), ("sm-", 576), ("md-", 768)):
        rules = []
        for prop, p in (("margin", "m"), ("padding", "p")):
            for side, props in sides.items():
                for i, size in enumerate(sizes):
                    decl = ";".join(f"{prop}{s}:{size}!important" for s in props)
                    rules.append(f".{p}{side}-{bp}{i}{{{decl}}}")
            if prop == "margin":
                rules.append(f".mr-{bp}auto{{margin-right:auto!important}}")
                rules.append(f".ml-{bp}auto{{margin-left:auto!important}}")
        block = "\n".join(rules)
        out.append(f"@media (min-width:{width}px){{\n{block}\n}}" if width else block)
    return "\n".join(out)


def _css() -> str:
    return (
        _CSS
        + "\n"
        + _spacing()
        + """
@media (max-width:767.98px){
  .tg-main{padding:1rem}
  .tg-navbar{flex-wrap:wrap;padding:.5rem 1rem}
  .col-6{flex:0 0 100%;max-width:100%}
}
"""
    )


_CSS = """/* tidegate: the offline stylesheet of the Data Docs (no CDN; replaces bootstrap for GX's markup) */
:root{color-scheme:light;--ok:#1e8e3e;--bad:#d93025;--warn:#e37400;--muted:#5f6368;--line:#dadce0;
  --soft:#f1f3f4;--link:#0b57d0;--accent:#ff6310}
*,*::before,*::after{box-sizing:border-box}
html{-webkit-text-size-adjust:100%}
body{margin:0;font-family:system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,"Noto Sans",
  "Liberation Sans","DejaVu Sans",sans-serif;font-size:15px;line-height:1.5;color:#202124;background:#fff}
a{color:var(--link);text-decoration:none}a:hover{text-decoration:underline}
h4,h5,h6,.h6{margin:0 0 .5rem;font-weight:600;line-height:1.25}
h4{font-size:1.3rem}h5{font-size:1.1rem}h6,.h6{font-size:.95rem}
p{margin:0 0 1rem}code{font-family:ui-monospace,"DejaVu Sans Mono",monospace;font-size:.9em}
.lead{color:var(--muted)}.text-muted{color:var(--muted)!important}.text-center{text-align:center!important}
.text-success{color:var(--ok)!important}.text-danger{color:var(--bad)!important}
.text-warning{color:var(--warn)!important}
strong,b{font-weight:600}ul{padding-inline-start:20px}[hidden]{display:none!important}
.invisible{visibility:hidden!important}.d-none{display:none!important}.d-flex{display:flex!important}
.d-inline-flex{display:inline-flex!important}.float-left{float:left!important}.h-100{height:100%!important}
.align-items-center{align-items:center!important}.justify-content-center{justify-content:center!important}
.flex-column{flex-direction:column!important}.rounded{border-radius:.3rem!important}
.bg-light{background:var(--soft)!important}.border-bottom{border-bottom:1px solid var(--line)!important}
@media (min-width:576px){.d-sm-block{display:block!important}.flex-sm-row{flex-direction:row!important}}
@media (min-width:768px){.d-md-block{display:block!important}.d-md-inline-flex{display:inline-flex!important}}

/* top bar */
.tg-navbar{position:sticky;top:0;z-index:1020;display:flex;align-items:center;gap:1rem;min-height:60px;
  padding:.5rem 1.25rem;background:#fff;border-bottom:1px solid var(--line)}
.tg-brand{display:inline-flex;flex:none}.tg-brand img{display:block;width:auto;height:40px}
.breadcrumb{display:flex;flex-wrap:wrap;align-items:center;min-width:0;margin:0;padding:.35rem .8rem;
  list-style:none;background:var(--soft);border-radius:.3rem;font-size:.9rem}
.breadcrumb-item{overflow-wrap:anywhere}
.breadcrumb-item+.breadcrumb-item::before{content:"/";padding:0 .5rem;color:var(--muted)}
.breadcrumb-item.active{color:var(--muted)}

/* grid */
.container-fluid{width:100%;padding-left:15px;padding-right:15px}
.tg-main{padding:1.5rem 2.5rem}
.row{display:flex;flex-wrap:wrap;margin-left:-15px;margin-right:-15px}
.row>*,[class*="col-"]{position:relative;width:100%;min-width:0;padding-left:15px;padding-right:15px}
.col-12{flex:0 0 100%;max-width:100%}.col-6{flex:0 0 50%;max-width:50%}.col-4{flex:0 0 33.333%;max-width:33.333%}
@media (min-width:768px){
  .col-md-2{flex:0 0 16.667%;max-width:16.667%}.col-md-10{flex:0 0 83.333%;max-width:83.333%}
  .col-md-4{flex:0 0 33.333%;max-width:33.333%}.col-md-6{flex:0 0 50%;max-width:50%}
  .col-md-8{flex:0 0 66.667%;max-width:66.667%}
  .sticky{position:sticky;top:80px;z-index:1}
}
@media (min-width:992px){.col-lg-2{flex:0 0 16.667%;max-width:16.667%}.col-lg-10{flex:0 0 83.333%;max-width:83.333%}}
.tg-main>.row{margin-left:0;margin-right:0}
.tg-main>.row>*{padding-left:0;padding-right:0}
@media (min-width:768px){.tg-main>.row>.tg-content{padding-left:1.5rem}}
.ge-section>.row{margin-left:0;margin-right:0}
.ge-section>.row>*{padding-left:0;padding-right:0}
.ge-section{clear:both;margin-bottom:1.5rem;padding-bottom:.5rem}
.tg-content>.ge-section{padding-left:0!important;padding-right:0!important}

/* components GX's content blocks use */
.alert{position:relative;padding:.65rem 1rem;margin-bottom:.75rem;border:1px solid transparent;border-radius:.3rem}
.alert-secondary{background:#eef0f3;border-color:#dfe3e8;color:#202124}
.alert-info{background:#e8f0fe;border-color:#d2e3fc}
.card{position:relative;display:flex;flex-direction:column;min-width:0;background:#fff;
  border:1px solid var(--line);border-radius:.4rem}
.card-header{padding:.5rem .75rem;background:var(--soft);border-bottom:1px solid var(--line);
  border-radius:.4rem .4rem 0 0}
.card-body{flex:1 1 auto;padding:1rem}
.badge{display:inline-block;padding:.2em .45em;margin:.05em 0;font-size:78%;font-weight:600;line-height:1.1;
  white-space:nowrap;vertical-align:baseline;border-radius:.25rem}
.badge-secondary{color:#fff;background:#5f6368}
.badge-info{color:#fff;background:#1a73e8}.badge-danger{color:#fff;background:var(--bad)}
.table,.tg-tabs table{width:100%;margin-bottom:1rem;border-collapse:collapse;background:#fff}
.table th,.table td,.tg-tabs th,.tg-tabs td{padding:.5rem .65rem;vertical-align:top;
  border-top:1px solid var(--line);text-align:left}
.table thead th,.tg-tabs thead th{vertical-align:bottom;border-bottom:2px solid var(--line);border-top:0;
  font-weight:600}
.table-sm th,.table-sm td,.tg-tabs .table-sm th,.tg-tabs .table-sm td{padding:.3rem .5rem}
.table-responsive{display:block;width:100%;overflow-x:auto}
.show-scrollbars{overflow:auto}td .show-scrollbars{max-height:60vh}
.nav{display:flex;flex-wrap:wrap;margin:0;padding-left:0;list-style:none}
.nav-link{display:block;padding:.3rem .6rem;border-radius:.3rem;color:var(--link)}
.nav-link:hover{background:#e8f0fe;text-decoration:none}
#navigation{display:block;padding:.25rem}
.btn{display:inline-block;padding:.3rem .7rem;border:1px solid var(--line);border-radius:.3rem;background:#fff}
.cooltip{display:inline-block;position:relative;text-align:left;cursor:help}
.cooltip .top{display:none;position:absolute;z-index:50;top:-6px;left:50%;min-width:220px;max-width:420px;
  transform:translate(-50%,-100%);padding:.6rem .9rem;color:#fff;background:#202124;border-radius:.4rem;
  font-size:.8rem;font-weight:400;white-space:pre-wrap;box-shadow:0 1px 8px rgba(0,0,0,.4)}
.cooltip:hover .top{display:block}
.cooltip .top i{display:none}
pre{white-space:pre-wrap;overflow-wrap:anywhere}

/* icons (inline SVG, see data_docs.py) */
.tg-icon{display:inline-block;width:1.15em;height:1.15em;vertical-align:-.2em;flex:none}
td .tg-icon{width:1.35em;height:1.35em}
.tg-icon.text-success{color:var(--ok)!important}.tg-icon.text-danger{color:var(--bad)!important}

/* "show more info" without a script */
.tg-collapse>summary{cursor:pointer;color:var(--link);margin:.25rem 0}
.tg-collapse>.card{margin:.5rem 0!important}

/* the index: every tab is a section; the validations table is plain HTML */
.tg-tab{margin:0 0 2rem}
.tg-tab-title{padding:.4rem 0;margin-bottom:.5rem;border-bottom:2px solid var(--accent)}
.tg-index .table-responsive{font-size:.93rem}
.ge-index-page-validation-results-table .tg-col-run_time{min-width:8em}
@media (min-width:1200px){
  .ge-index-page-validation-results-table :is(.tg-col-run_name,.tg-col-asset_name,.tg-col-batch_identifier){
    white-space:nowrap}
}
@media (min-width:768px){.tg-main>.row>.tg-index{padding-left:0}}
/* narrower screens: the run name is the batch id's prefix, the suite is named after the asset */
@media (max-width:1199.98px){.ge-index-page-validation-results-table .tg-col-run_name{display:none}}
@media (max-width:991.98px){.ge-index-page-validation-results-table .tg-col-expectation_suite_name{display:none}}
.ge-index-page-table-expectation-suite-link{word-break:normal!important;overflow-wrap:break-word}
.ge-index-page-validation-results-table td.tg-col-validation_success,
.ge-index-page-validation-results-table th.tg-col-validation_success{text-align:center;width:4.5rem}
.ge-index-page-validation-results-table tbody tr:hover{background:#f8f9fa}
.tg-row-link{font-weight:600}

/* "failed only" without a script: a radio button and :has() */
.tg-toggle{display:flex;flex-wrap:wrap;gap:.4rem}
.tg-toggle label{display:inline-flex;align-items:center;gap:.3rem;padding:.25rem .6rem;margin:0;cursor:pointer;
  border:1px solid var(--line);border-radius:.3rem;font-size:.9rem}
.tg-toggle label:has(input:checked){background:#e8f0fe;border-color:#a8c7fa}
body:has(#tg-failed-only:checked) tr:has(>td.hide-succeeded-validation-target-child),
body:has(#tg-failed-only:checked) .ge-section:has(.hide-succeeded-validations-column-section-target-child),
body:has(#tg-failed-only:checked) .hide-succeeded-validation-target{display:none}
"""
