"""The code blocks of the README and the docs pages, read with sybil, and how each one runs.

Every fenced block of a page is one of these, by its language:

- ``python``: a program. It is written to a file in the page's scratch directory and run
  there with this interpreter, as a process of its own, after the page's earlier programs.
  It must exit 0 and print nothing on stderr. A mark (an HTML comment, invisible on GitHub
  and on the site) on the line before it can say otherwise:

  - ``<!-- example: file NAME -->``: only written, as NAME, for the programs after it;
  - ``<!-- example: run NAME -->``: written as NAME (not ``example-LINE.py``) and run;
  - ``<!-- example: not a program, WHY -->``: a fragment or a summary, not run.
- ``output``: what the program just above prints; ``...`` stands for any text. A program
  that prints must be followed by its output.
- ``sh`` and ``text``: shell sessions, messages and formulas, never run.
- ``{directive}``: a directive of the docs site (a table of contents, the API reference).

``<!-- example: needs MODULE -->`` anywhere on a page runs the page only where MODULE can
be imported. A block in no language or another one, or a mark that no block follows, is an
error: nothing is left out by accident.
"""

import doctest
import importlib.util
import re
import subprocess
import sys
from dataclasses import dataclass

import pytest
from sybil import Document, Region
from sybil.parsers.markdown.lexers import DirectiveInHTMLCommentLexer, RawFencedCodeBlockLexer

NOT_RUN = {"sh", "console", "text"}
_BLOCKS = RawFencedCodeBlockLexer(info_pattern=re.compile(r"(?P<language>[^\n]*)$\n", re.MULTILINE))
_MARKS = DirectiveInHTMLCommentLexer(directive="example", arguments=r"[^\n]+?")
_OUTPUT = doctest.OutputChecker()


class ExampleError(AssertionError):
    """A page whose blocks break the rules above, or a program that did not do what it shows."""


@dataclass
class Block:
    language: str
    source: str
    line: int


@dataclass
class Mark:
    words: str
    line: int


@dataclass
class Run:
    """A program of the page that ran: its file name, where it is, what it printed."""
    name: str
    line: int
    stdout: str


def _line_of(document, position):
    return document.text.count("\n", 0, position) + 1


def _blocks(document):
    for lexed in _BLOCKS(document):
        block = Block(lexed.lexemes["language"].strip(), str(lexed.lexemes["source"]),
                      _line_of(document, lexed.start))
        yield Region(lexed.start, lexed.end, block, _evaluate_block)


def _marks(document):
    for lexed in _MARKS(document):
        mark = Mark(lexed.lexemes["arguments"].strip(), _line_of(document, lexed.start))
        yield Region(lexed.start, lexed.end, mark, _evaluate_mark)


def _evaluate_block(example):
    example.namespace["page"].block(example.parsed)


def _evaluate_mark(example):
    example.namespace["page"].mark(example.parsed)


class Page:
    """One page's examples, run in order in a scratch directory of their own."""

    def __init__(self, path, directory):
        self.path, self.directory = path, directory
        self.runs = []
        self._mark = None
        self._unchecked = None  # the last program run, while its output may still follow

    def run_all(self):
        """Run every example of the page, in order; the programs that ran, in order."""
        document = Document.parse(str(self.path), _blocks, _marks)
        document.namespace["page"] = self
        for example in document:
            example.evaluate()
        if self._mark:
            raise self._error(self._mark.line,
                              f"the mark '{self._mark.words}' is followed by no block")
        self._expect_no_output()
        return self.runs

    def mark(self, mark):
        if mark.words.startswith("needs "):
            module = mark.words.removeprefix("needs ").strip()
            if importlib.util.find_spec(module) is None:
                pytest.skip(f"{self.path.name} needs {module}, which is not installed")
            return
        if self._mark:
            raise self._error(mark.line, "two marks in a row")
        self._mark = mark

    def block(self, block):
        mark, self._mark = self._mark, None
        if block.language == "output":
            if mark:
                raise self._error(block.line, "an output block takes no mark")
            self._check_output(block)
            return
        self._expect_no_output()
        if block.language in NOT_RUN or block.language.startswith("{"):
            if mark:
                raise self._error(block.line, f"a {block.language} block is never run: drop its mark")
            return
        if block.language != "python":
            raise self._error(block.line, f"a block in '{block.language or 'no language'}': "
                                          f"say whether it is python, output, sh or text")
        self._program(block, mark.words if mark else f"run example-{block.line}.py", mark)

    def _program(self, block, words, mark):
        if words.startswith("not a program"):
            return
        kind, _, name = words.partition(" ")
        if kind not in ("file", "run") or not re.fullmatch(r"[\w-]+\.py", name):
            raise self._error(mark.line, f"unknown mark '{words}'")
        (self.directory / name).write_text(block.source)
        if kind == "file":
            return
        finished = subprocess.run([sys.executable, name], cwd=self.directory, capture_output=True,
                                  text=True, stdin=subprocess.DEVNULL, timeout=600)
        if finished.returncode != 0 or finished.stderr:
            raise self._error(block.line, f"{name} exited {finished.returncode}:\n"
                                          f"{finished.stdout}{finished.stderr}")
        self.runs.append(Run(name, block.line, finished.stdout))
        self._unchecked = self.runs[-1] if finished.stdout else None

    def _check_output(self, block):
        run, self._unchecked = self._unchecked, None
        if run is None:
            raise self._error(block.line, "an output block that follows no program that printed")
        if not _OUTPUT.check_output(block.source, run.stdout, doctest.ELLIPSIS):
            raise self._error(block.line, f"{run.name} printed\n{run.stdout}\n"
                                          f"where the page shows\n{block.source}")

    def _expect_no_output(self):
        run, self._unchecked = self._unchecked, None
        if run:
            raise self._error(run.line,
                              f"{run.name} prints, but no output block shows what:\n{run.stdout}")

    def _error(self, line, problem):
        return ExampleError(f"{self.path.name}, line {line}: {problem}")
