"""Every derivation in docs/ points at the lines that implement it, and those lines still hold the formula.

A derivation cites code as a link with a line range, followed by the quoted lines in a ```python block:

    [npdiff/nn/layers.py#L93-L102](../npdiff/nn/layers.py#L93-L102)

    ```python
    return x.dot(self.params["W"]) + self.params["b"]  # x W + b  (N, H)
    …
    self.grads["W"] += x.T.dot(dy)  # dL/dW = xᵀ · dL/dy     (I, H)
    ```

The test checks that the file exists, that the range lies inside it, and that every quoted line (whitespace
normalised; ``…`` marks skipped lines) occurs inside the range, in order. A quoted line with a ``#`` comment
must match the source line with its comment; a quoted line without one matches the code before the comment.
On failure it says where the quoted lines are now. After code moves, re-sync every range with

    python tests/test_docs_derivations.py --fix

which rewrites each link's range (in its text and its target) to the span of the quoted lines.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "docs" / "reading-order.md", ROOT / "docs" / "derivations.md"]
ELLIPSIS = ("…", "...", "# …", "# ...")

# a link to a repository file with a line anchor: [label](../path#L12-L30) or (../path#L12)
LINK = re.compile(r"\[(?P<label>[^\]\n]+)\]\((?P<path>(?:\.\./)+[\w./-]+\.py)#L(?P<a>\d+)(?:-L(?P<b>\d+))?\)")
FENCE = re.compile(r"\s*```python[ \t]*\n(?P<body>.*?)^```", re.M | re.S)


@dataclass
class Citation:
    page: Path
    line: int  # 1-based line of the link on the page
    start: int  # character offsets of the whole link on the page
    end: int
    label: str
    target: Path
    first: int  # the cited range, 1-based, inclusive
    last: int
    quoted: list[str]  # the quoted code lines, ellipses dropped

    def where(self) -> str:
        return f"{self.page.relative_to(ROOT).as_posix()}:{self.line}"

    def rel_target(self) -> str:
        return self.target.relative_to(ROOT).as_posix()


def _norm(line: str) -> str:
    return " ".join(line.split())


def _code_part(line: str) -> str:
    """The line without a trailing ``# comment`` (npdiff writes comments after two spaces or at line start)."""
    return _norm(re.split(r"(?:^|\s)#\s", line, maxsplit=1)[0])


def _matches(quoted: str, source: str) -> bool:
    q = _norm(quoted)
    if re.search(r"(?:^|\s)#\s", quoted) or q.startswith("#"):
        return q == _norm(source)
    return q == _code_part(source) and q != ""


def citations(page: Path) -> list[Citation]:
    """Every line-anchored link on the page with the quoted block that follows it."""
    text = page.read_text(encoding="utf-8")
    found = []
    for match in LINK.finditer(text):
        fence = FENCE.match(text, match.end())
        body = fence.group("body") if fence else ""
        quoted = [line for line in body.splitlines() if line.strip() and _norm(line) not in ELLIPSIS]
        first = int(match.group("a"))
        found.append(Citation(page, text.count("\n", 0, match.start()) + 1, match.start(), match.end(),
                              match.group("label"), (page.parent / match.group("path")).resolve(), first,
                              int(match.group("b") or first), quoted))
    return found


def locate(quoted: list[str], source: list[str], near: int = 1) -> tuple[int, int] | None:
    """The tightest 1-based (first, last) span holding the quoted lines in order, or None if one is missing.

    Among spans of equal length the one starting nearest ``near`` wins (a formula quoted twice in a file).
    """
    if not quoted:
        return None
    candidates = [[i + 1 for i, s in enumerate(source) if _matches(q, s)] for q in quoted]
    best = None
    for start in candidates[0]:
        position, ok = start, True
        for later in candidates[1:]:
            following = [i for i in later if i > position]
            if not following:
                ok = False
                break
            position = following[0]
        if ok:
            key = (position - start, abs(start - near))
            if best is None or key < best[0]:
                best = (key, (start, position))
    return None if best is None else best[1]


def problems(citation: Citation) -> list[str]:
    """What is wrong with one citation (empty when it holds)."""
    where = f"{citation.where()} cites {citation.rel_target()}#L{citation.first}-L{citation.last}"
    if not citation.target.is_file():
        return [f"{where}: the file does not exist"]
    if not citation.quoted:
        return [f"{where}: no ```python block of quoted lines follows the link"]
    source = citation.target.read_text(encoding="utf-8").splitlines()
    if not 1 <= citation.first <= citation.last <= len(source):
        return [f"{where}: the range is outside the file ({len(source)} lines)"]
    inside = source[citation.first - 1:citation.last]
    if locate(citation.quoted, inside) is not None:
        return []
    now = locate(citation.quoted, source, citation.first)
    missing = [q for q in citation.quoted if not any(_matches(q, s) for s in source)]
    if missing:
        return [f"{where}: quoted line(s) no longer in the file: {missing}"]
    if now is None:
        return [f"{where}: the quoted lines are in the file but not in the quoted order"]
    return [f"{where}: the quoted lines are now at L{now[0]}-L{now[1]} "
            f"(run `python tests/test_docs_derivations.py --fix`)"]


def fix(page: Path) -> list[str]:
    """Rewrite every citation's range on the page to where its quoted lines are now; -> what changed."""
    text = page.read_text(encoding="utf-8")
    changes, pieces, position = [], [], 0
    for citation in citations(page):
        if not citation.target.is_file():
            continue
        source = citation.target.read_text(encoding="utf-8").splitlines()
        now = locate(citation.quoted, source, citation.first)
        if now is None or now == (citation.first, citation.last):
            continue
        anchor = f"L{now[0]}" if now[0] == now[1] else f"L{now[0]}-L{now[1]}"
        old = text[citation.start:citation.end]
        new = re.sub(r"#L\d+(?:-L\d+)?", "#" + anchor, old)
        pieces += [text[position:citation.start], new]
        position = citation.end
        changes.append(f"{citation.where()}: {citation.rel_target()} L{citation.first}-L{citation.last} -> {anchor}")
    if changes:
        page.write_text("".join(pieces) + text[position:], encoding="utf-8")
    return changes


# --- the tests ---

# every hand-written backward that issue 17 asks to be derived: (a heading word, a file it must cite)
REQUIRED = {
    "Linear": "npdiff/nn/layers.py",
    "ReLU": "npdiff/nn/layers.py",
    "SiLU": "npdiff/nn/layers.py",
    "GELU": "npdiff/nn/layers.py",
    "LayerNorm": "npdiff/nn/layers.py",
    "residual": "npdiff/nn/layers.py",
    "timestep": "npdiff/nn/denoiser.py",
    "label": "npdiff/nn/embeddings.py",
    "cross-entropy": "npdiff/nn/losses.py",
    "KL": "npdiff/processes/gaussian.py",
    "logit": "npdiff/processes/sohl_dickstein.py",
    "learned-range": "npdiff/processes/ddpm.py",
    "Adam": "npdiff/nn/optim.py",
}


def _existing_pages() -> list[Path]:
    return [p for p in PAGES if p.exists()]


def _all_citations() -> list[Citation]:
    return [c for page in _existing_pages() for c in citations(page)]


def _sections(page: Path) -> list[tuple[str, str]]:
    """(heading, body) of every ## / ### section."""
    text = page.read_text(encoding="utf-8")
    parts = re.split(r"^(#{2,3} .+)$", text, flags=re.M)
    return [(parts[i].lstrip("# ").strip(), parts[i + 1]) for i in range(1, len(parts), 2)]


def test_the_reading_order_page_exists_and_cites_code():
    assert PAGES[0].exists(), "docs/reading-order.md is missing"
    assert len(_all_citations()) >= len(REQUIRED)


def test_every_cited_range_exists_and_still_holds_the_quoted_code():
    found = [p for c in _all_citations() for p in problems(c)]
    assert not found, "\n".join(found)


def test_every_backward_of_issue_17_has_a_section_citing_its_file():
    sections = [(h, body) for page in _existing_pages() for h, body in _sections(page)]
    for word, path in REQUIRED.items():
        cited = [body for heading, body in sections
                 if word.lower() in heading.lower() and f"{path}#L" in body]
        assert cited, f"no section whose heading names {word!r} cites {path} with a line range"


def _page(tmp_path: Path, code: list[str], first: int, last: int, quoted: list[str]) -> Path:
    (tmp_path / "pkg").mkdir(parents=True)
    (tmp_path / "pkg" / "mod.py").write_text("\n".join(code) + "\n", encoding="utf-8")
    (tmp_path / "docs").mkdir()
    page = tmp_path / "docs" / "page.md"
    block = "\n".join(quoted)
    page.write_text(f"# t\n\n[pkg/mod.py#L{first}-L{last}](../pkg/mod.py#L{first}-L{last})\n\n"
                    f"```python\n{block}\n```\n", encoding="utf-8")
    return page


CODE = ["import math", "", "def f(x):", "    y = 2 * x  # dy/dx = 2", "    return y", ""]


def test_a_range_that_no_longer_holds_the_quoted_line_is_reported_with_where_it_is(tmp_path, monkeypatch):
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    page = _page(tmp_path, CODE, 1, 3, ["y = 2 * x"])
    (citation,) = citations(page)
    (message,) = problems(citation)
    assert "now at L4-L4" in message, message
    edited = _page(tmp_path / "b", CODE, 3, 5, ["y = 3 * x"])  # the formula itself changed
    (message,) = problems(citations(edited)[0])
    assert "no longer in the file" in message, message


def test_a_quoted_comment_must_match_and_an_unquoted_one_is_ignored(tmp_path, monkeypatch):
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    assert not problems(citations(_page(tmp_path / "a", CODE, 3, 5, ["y = 2 * x  # dy/dx = 2"]))[0])
    assert not problems(citations(_page(tmp_path / "b", CODE, 3, 5, ["y = 2 * x", "…", "return y"]))[0])
    assert problems(citations(_page(tmp_path / "c", CODE, 3, 5, ["y = 2 * x  # dy/dx = 3"]))[0])
    assert problems(citations(_page(tmp_path / "d", CODE, 3, 5, ["return y", "y = 2 * x"]))[0])  # order


def test_fix_moves_each_range_to_the_quoted_lines(tmp_path, monkeypatch):
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    page = _page(tmp_path, ["# a new first line"] + CODE, 3, 5, ["def f(x):", "…", "return y"])
    assert problems(citations(page)[0])
    (change,) = fix(page)
    assert change.endswith("-> L4-L6"), change
    assert "[pkg/mod.py#L4-L6](../pkg/mod.py#L4-L6)" in page.read_text(encoding="utf-8")
    assert not problems(citations(page)[0])
    assert fix(page) == []


# --- the worked example: demos/worked_example.py's printed loss, recomputed here from the formulas ---

def _load_demo():
    import importlib.util
    spec = importlib.util.spec_from_file_location("worked_example", ROOT / "demos" / "worked_example.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _plain_loss(params: dict, config: dict, x0, t, noise) -> float:
    """L = mean (ε_θ(x_t, t) − ε)² from the paper's formulas and the model's weights, with plain NumPy only."""
    import numpy as np
    betas = np.linspace(1e-4, 0.02, 1000)  # Ho et al.'s linear schedule, β_1..β_T
    alpha_bar = np.cumprod(1.0 - betas)[t - 1][:, None]  # ᾱ_t  (N, 1)
    x_t = np.sqrt(alpha_bar) * x0 + np.sqrt(1.0 - alpha_bar) * noise
    half = config["emb_dim"] // 2
    omega = np.exp(-np.log(10000.0) * np.arange(half) / (half - 1))

    def emb(s, scale):  # [sin | cos] of each column  (N, C) -> (N, C·E)
        arg = scale * s[:, :, None] * omega
        return np.concatenate([np.sin(arg), np.cos(arg)], axis=2).reshape(s.shape[0], -1)

    def gelu(u):
        return 0.5 * u * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (u + 0.044715 * u ** 3)))

    def layernorm(u, gamma, beta):
        centered = u - u.mean(axis=1, keepdims=True)
        return gamma * centered / np.sqrt((centered ** 2).mean(axis=1, keepdims=True) + 1e-5) + beta

    p = params
    h = gelu(np.concatenate([emb(x_t, 25.0), emb(t[:, None].astype(float), 1.0)], axis=1) @ p["inp.0.W"]
             + p["inp.0.b"])
    for i in range(config["n_blocks"]):
        u = layernorm(h, p[f"blocks.{i}.fn.0.gamma"], p[f"blocks.{i}.fn.0.beta"])
        h = h + gelu(u @ p[f"blocks.{i}.fn.1.W"] + p[f"blocks.{i}.fn.1.b"])
    eps_theta = h @ p["out.W"] + p["out.b"]
    return float(((eps_theta - noise) ** 2).mean())


def test_worked_example_prints_the_loss_that_the_formulas_give(tmp_path):
    import os
    import subprocess
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    env.pop("NPDIFF_BACKEND", None)
    out = tmp_path / "out"
    run = subprocess.run([sys.executable, str(ROOT / "demos" / "worked_example.py"), "--out", str(out)],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    printed = re.search(r"^L = mean \(ε_θ − ε\)² = ([\d.]+)$", run.stdout, flags=re.M)
    assert printed, run.stdout
    demo = _load_demo()
    model, _, x0, t, noise = demo.inputs()
    params = {k: v.copy() for k, v in model.parameters().items()}
    assert sorted(params) == sorted(["inp.0.W", "inp.0.b", "blocks.0.fn.0.gamma", "blocks.0.fn.0.beta",
                                     "blocks.0.fn.1.W", "blocks.0.fn.1.b", "out.W", "out.b"])
    assert float(printed.group(1)) == pytest.approx(_plain_loss(params, model.config, x0, t, noise), abs=1e-12)
    assert "the same loss and gradients" in run.stdout
    page = PAGES[0].read_text(encoding="utf-8")
    excerpt = re.search(r"python demos/worked_example.py\n```\n.*?```text\n(.*?)^```", page, flags=re.M | re.S)
    assert excerpt, "docs/reading-order.md shows no ```text excerpt after the worked example's command"
    printed_lines = set(run.stdout.splitlines())
    stale = [line for line in excerpt.group(1).splitlines()
             if line.strip() not in ("…", "") and line not in printed_lines]
    assert not stale, f"the excerpt shows lines the script no longer prints (paste a fresh run): {stale}"
    assert str(out) in run.stdout.splitlines()[-1]
    assert (out / "worked_example.txt").read_text(encoding="utf-8").count("\n") > 100


def main(argv: list[str]) -> int:
    if argv[1:] != ["--fix"]:
        print("usage: python tests/test_docs_derivations.py --fix   (re-sync the cited line ranges in docs/)")
        return 2
    for page in _existing_pages():
        for change in fix(page):
            print(change)
    left = [p for c in _all_citations() for p in problems(c)]
    print("\n".join(left) if left else "every cited range holds its quoted lines")
    return 1 if left else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
