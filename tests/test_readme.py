"""The README tells the truth: its Python example runs, its headline table is the one its command
generates from the committed results, CI runs the test command it names, and the docs cite no Markdown
file the repository lacks."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text(encoding="utf-8")


def _blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", README, flags=re.S)


def test_the_python_example_runs(tmp_path, monkeypatch, johns_dir):
    (python,) = _blocks("python")
    for p in sorted(johns_dir.glob("*/*.jpg"))[:6]:  # the example's "scraped" folder: a few chips
        (tmp_path / "scraped" / p.parent.name).mkdir(parents=True, exist_ok=True)
        shutil.copy2(p, tmp_path / "scraped" / p.parent.name / p.name)
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(python, "README.md", "exec"), namespace)
    assert namespace["clean"].shape == namespace["cloaked"].shape == (4, 3, 150, 150)
    assert namespace["embedding"].shape == (4, 128)
    assert namespace["report"].written == 6 and len(list((tmp_path / "purified").rglob("*.jpg"))) == 6
    torch.testing.assert_close(namespace["embedding"].norm(dim=1), torch.ones(4), atol=1e-5, rtol=0)


def test_the_headline_table_is_generated_from_the_committed_results():
    from puface.cli.report_cmd import replace_between_markers
    from puface.evaluation.summaries import headline, headline_markdown, load_summary

    table = headline_markdown(headline(load_summary(REPO / "docs" / "results" / "lfw")), ("white-box",))
    assert replace_between_markers(README, table) == README  # what `--readme README.md` would write
    assert "puface report headline docs/results/lfw\n--rows white-box --readme README.md" in README


def test_ci_runs_the_test_command_the_readme_names():
    (setup,) = [b for b in _blocks("bash") if "scripts/setup.sh --test" in b]
    command = next(line for line in setup.splitlines() if "setup.sh --test" in line).strip()
    assert command in (REPO / ".ci" / "run").read_text()
    assert "bash scripts/setup.sh && .venv/bin/puface demo" in setup
    assert len(README.splitlines()) <= 160


def test_the_markdown_files_the_docs_cite_are_in_the_repository():
    docs = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
    names = {p.name for p in REPO.rglob("*.md") if ".git" not in p.parts}
    for doc in docs:
        for cited in re.findall(r"`([^`\s]+\.md)`", doc.read_text(encoding="utf-8")):
            assert (REPO / cited).is_file() or (doc.parent / cited).is_file() or cited in names, (
                f"{doc.name} cites {cited}"
            )
