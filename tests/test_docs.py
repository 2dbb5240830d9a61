"""The documentation: the site builds with ``mkdocs build --strict``, every public function, class,
method and property shown in the API reference has a docstring, the guide notebook runs top to
bottom on the NumPy backend, and every relative link of README.md and docs/*.md names a file of
the repository.

The docstring check reads the code with Griffe, as mkdocstrings does to render the reference, and
looks at the objects the ``::: module`` blocks of docs/*.md render; mkdocstrings itself would
quietly leave an undocumented object out of the page.
"""
import json
import os
import re
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from urllib.parse import unquote

import griffe
import nbformat
import yaml
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
NOTEBOOK = ROOT / "examples" / "guide.ipynb"

# The public modules the reference must cover (issue 18).
REFERENCE_MODULES = (
    "gpucnn", "gpucnn.layers", "gpucnn.models", "gpucnn.optimizers", "gpucnn.losses",
    "gpucnn.metrics", "gpucnn.callbacks", "gpucnn.datasets", "gpucnn.zoo", "gpucnn.functional",
    "gpucnn.backend", "gpucnn.cache", "gpucnn.plots", "gpucnn.io",
)
PAGES = ("index", "guide", "data", "design", "backends", "kernels", "benchmarks", "gpu",
         "gpu-results", "distributed")


# ----------------------------------------------------------------------------- the site

def test_site_builds_in_strict_mode(tmp_path):
    site = tmp_path / "site"
    r = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file",
                        str(ROOT / "mkdocs.yml"), "--site-dir", str(site)],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, f"mkdocs build --strict failed:\n{r.stdout}\n{r.stderr}"
    for page in PAGES:
        path = site / ("index.html" if page == "index" else f"{page}/index.html")
        assert path.is_file(), f"the site has no page {page} ({path} missing)"
    rendered = "".join((site / f"{p}/index.html").read_text() for p in
                       ("api-core", "api-layers", "api-training", "api-functional", "api-data"))
    for anchor in ("gpucnn.Tensor", "gpucnn.backend.set_backend", "gpucnn.layers.Conv2D",
                   "gpucnn.models.Model.fit", "gpucnn.optimizers.SGD", "gpucnn.losses.get",
                   "gpucnn.functional.conv2d", "gpucnn.datasets.mnist", "gpucnn.zoo.lenet5",
                   "gpucnn.io.save_arrays", "gpucnn.cache.fill", "gpucnn.plots.filters"):
        assert f'id="{anchor}"' in rendered, f"the API reference does not render {anchor}"


# ----------------------------------------------------------------------------- docstrings

def reference_blocks(docs=DOCS):
    """``[(page, identifier, options)]`` of every ``::: identifier`` block in ``docs/*.md``."""
    blocks = []
    for page in sorted(Path(docs).glob("*.md")):
        lines = page.read_text().splitlines()
        for i, line in enumerate(lines):
            m = re.match(r"^:::\s+(\S+)\s*$", line)
            if not m:
                continue
            body = []
            for nxt in lines[i + 1:]:
                if not nxt.startswith((" ", "\t")) or not nxt.strip():
                    break
                body.append(nxt)
            config = yaml.safe_load(textwrap.dedent("\n".join(body))) or {}
            blocks.append((page.name, m.group(1), config.get("options") or {}))
    return blocks


def _documented_in_a_base(cls, name):
    try:
        bases = cls.mro()
    except Exception:  # noqa: BLE001 - a base griffe cannot resolve: no inherited docstring
        bases = []
    return any(name in b.members and b.members[name].docstring for b in bases)


def _shown(obj):
    """Functions, classes and properties (what the reference renders with a heading)."""
    return obj.is_function or obj.is_class or (obj.is_attribute and "property" in obj.labels)


def undocumented(search_path, blocks):
    """Paths of the public objects that the given reference blocks render and that have no
    docstring. A method or property counts as documented when a base class documents it."""
    loader = griffe.GriffeLoader(search_paths=[str(search_path)])
    for package in sorted({ident.split(".")[0] for _, ident, _ in blocks}):
        loader.load(package)
    loader.resolve_aliases(implicit=False, external=False)
    missing, seen = set(), set()

    def visit_class(cls):
        if cls.path in seen:
            return
        seen.add(cls.path)
        for name, member in cls.all_members.items():
            if name.startswith("_"):
                continue
            target = member.final_target if member.is_alias else member
            if not _shown(target):
                continue
            if not target.docstring and not _documented_in_a_base(cls, name):
                missing.add(target.path)
            if target.is_class:
                visit_class(target)

    for _, ident, options in blocks:
        module = loader.modules_collection[ident]
        if not module.docstring:
            missing.add(ident)
        names = options.get("members")
        for name, member in module.members.items():
            if names is not None and name not in names:
                continue
            if names is None and not member.is_public:
                continue
            target = member.final_target if member.is_alias else member
            if not _shown(target):
                continue
            if not target.docstring:
                missing.add(target.path)
            if target.is_class:
                visit_class(target)
    return sorted(missing)


def test_reference_covers_the_public_modules():
    documented = {ident for _, ident, _ in reference_blocks()}
    missing = [m for m in REFERENCE_MODULES if m not in documented]
    assert not missing, f"docs/*.md has no ::: block for {missing}"


def test_every_public_object_in_the_reference_has_a_docstring():
    missing = undocumented(ROOT, reference_blocks())
    assert not missing, ("public objects of the API reference without a docstring (add one, "
                         "or they vanish from the reference):\n  " + "\n  ".join(missing))


def test_the_docstring_check_finds_what_is_missing(tmp_path):
    pkg = tmp_path / "src" / "toy"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text(textwrap.dedent('''
        """A toy package."""
        __all__ = ["documented", "bare", "Base", "Child"]


        def documented():
            """Has one."""


        def bare():
            pass


        def not_exported():
            pass


        class Base:
            """A class."""

            def method(self):
                pass

            def good(self):
                """Documented here."""

            @property
            def prop(self):
                return 1

            def _private(self):
                pass


        class Child(Base):
            """A subclass."""

            def good(self):
                return 2
    '''))
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "api.md").write_text("# API\n\n::: toy\n")
    blocks = reference_blocks(tmp_path / "docs")
    assert blocks == [("api.md", "toy", {})]
    assert undocumented(tmp_path / "src", blocks) == ["toy.Base.method", "toy.Base.prop",
                                                      "toy.bare"]
    (tmp_path / "docs" / "api.md").write_text("::: toy\n    options:\n      members: [documented]\n")
    assert undocumented(tmp_path / "src", reference_blocks(tmp_path / "docs")) == []


# ----------------------------------------------------------------------------- the notebook

def test_guide_notebook_runs_top_to_bottom_on_numpy(tmp_path, monkeypatch):
    nb = nbformat.read(NOTEBOOK, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    stored = [i for i, c in enumerate(code) if c.outputs or c.execution_count is not None]
    assert not stored, f"examples/guide.ipynb is saved with outputs in code cells {stored}"
    assert any("F.conv2d" in c.source and "== 9.0" in c.source for c in code), \
        "no cell asserts the guide's Figure 6 (a conv giving 9)"

    # A kernel spec of this interpreter, so that the notebook runs with the gpucnn under test
    # whatever other 'python3' kernels the machine has.
    spec = tmp_path / "jupyter" / "kernels" / "gpucnn-test"
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "gpucnn test", "language": "python"}))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(tmp_path / "runtime"))
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}
    env.update(GPUCNN_BACKEND="numpy", IPYTHONDIR=str(tmp_path / "ipython"))

    client = NotebookClient(nb, timeout=600, kernel_name="gpucnn-test",
                            resources={"metadata": {"path": str(NOTEBOOK.parent)}})
    start = time.monotonic()
    client.execute(env=env)               # any error in a cell raises CellExecutionError
    seconds = time.monotonic() - start

    text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code"
                   for o in c.outputs if o.output_type == "stream")
    assert "backend: numpy" in text
    images = sum("image/png" in o.get("data", {}) for c in nb.cells if c.cell_type == "code"
                 for o in c.outputs)
    assert images >= 10, f"expected the notebook's pictures inline, got {images}"
    if os.environ.get("GPUCNN_MNIST_DIR"):
        assert "MNIST: held-out accuracy" in text, "GPUCNN_MNIST_DIR is set but the MNIST part " \
                                                   "of the notebook did not run"
    print(f"examples/guide.ipynb executed in {seconds:.1f} s")


# ----------------------------------------------------------------------------- links

_FENCE = re.compile(r"^(```|~~~).*?^\1", re.M | re.S)
_CODE = re.compile(r"`[^`\n]*`")
_INLINE = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_REFERENCE = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s|$)", re.M)


def relative_links(text):
    """The targets of the Markdown links and images of ``text`` that are not URLs or anchors,
    outside code blocks and code spans."""
    text = _CODE.sub("", _FENCE.sub("", text))
    targets = _INLINE.findall(text) + _REFERENCE.findall(text)
    return [t for t in targets if not re.match(r"^[A-Za-z][A-Za-z0-9+.-]*:", t)
            and not t.startswith("#")]


def broken_links(md_file, root):
    """``[(target, why)]`` for the relative links of ``md_file`` that name no file in ``root``."""
    md_file, root = Path(md_file), Path(root).resolve()
    bad = []
    for target in relative_links(md_file.read_text()):
        path = unquote(target.split("#", 1)[0].split("?", 1)[0])
        resolved = (md_file.parent / path).resolve()
        if root not in resolved.parents and resolved != root:
            bad.append((target, "outside the repository"))
        elif not resolved.exists():
            bad.append((target, "no such file"))
    return bad


def test_relative_links_resolve_inside_the_repository():
    files = [ROOT / "README.md"] + sorted(DOCS.glob("*.md"))
    bad = {f.relative_to(ROOT).as_posix(): broken_links(f, ROOT) for f in files}
    bad = {f: b for f, b in bad.items() if b}
    assert not bad, f"broken relative links (target, why): {bad}"
    assert relative_links((ROOT / "README.md").read_text()), "README.md has no relative link"


def test_the_link_check_finds_broken_links(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "there.md").write_text("x")
    page = tmp_path / "README.md"
    page.write_text(textwrap.dedent("""
        [ok](docs/there.md#a-heading) ![pic](docs/missing.png) [web](https://example.org/x)
        [anchor](#top) [outside](../shared/DESIGN.md) `[code](not/a/link.md)`

        ```
        [fenced](not/a/link/either.md)
        ```

        [ref]: docs/gone.md
    """))
    assert broken_links(page, tmp_path) == [("docs/missing.png", "no such file"),
                                           ("../shared/DESIGN.md", "outside the repository"),
                                           ("docs/gone.md", "no such file")]
