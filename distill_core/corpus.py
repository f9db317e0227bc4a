"""An offline corpus of real English text: sentences from the docstrings of the Python
standard library. It needs no download, so the quickstart runs on a fresh offline machine,
and it is deterministic for a given Python version."""

from __future__ import annotations

import importlib
import inspect
import json
import re
import subprocess
import sys

# Well-documented stdlib modules; the list is fixed so the corpus is reproducible.
_MODULES = (
    "abc argparse ast asyncio base64 bisect builtins calendar cmd codecs collections "
    "concurrent.futures configparser contextlib copy csv dataclasses datetime decimal difflib "
    "email enum fileinput fnmatch fractions ftplib functools getopt gettext glob gzip hashlib "
    "heapq hmac html http.client http.server imaplib inspect io ipaddress itertools json "
    "logging mailbox mimetypes multiprocessing numbers operator optparse os pathlib pickle "
    "pkgutil platform plistlib poplib pprint queue random re sched secrets selectors shelve "
    "shlex shutil signal smtplib socket socketserver sqlite3 ssl statistics string struct "
    "subprocess tarfile tempfile textwrap threading timeit tokenize traceback turtle typing "
    "unittest urllib.parse urllib.request uuid warnings weakref xml.dom.minidom zipfile zlib"
).split()

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")
_PROSE = re.compile(r"^[A-Z][A-Za-z0-9 ,;:'()\-/]+[.!?]$")


def _docstrings(module_name: str) -> list[str]:
    try:
        module = importlib.import_module(module_name)
    except Exception:  # a platform may lack a module (e.g. turtle without Tk); skip it
        return []
    docs = [inspect.getdoc(module) or ""]
    for name, member in sorted(vars(module).items()):
        if name.startswith("_"):
            continue
        # Only members defined here: re-exports depend on what else was imported.
        if getattr(member, "__module__", None) != module.__name__:
            continue
        if inspect.isclass(member) or inspect.isfunction(member) or inspect.isbuiltin(member):
            docs.append(inspect.getdoc(member) or "")
            if inspect.isclass(member):
                for attr, value in sorted(vars(member).items()):
                    if not attr.startswith("_") and callable(value):
                        docs.append(inspect.getdoc(value) or "")
    return docs


def docstring_sentences(limit: int | None = None) -> list[str]:
    """Unique prose sentences from stdlib docstrings, in a fixed order.

    Collected in a fresh isolated interpreter: libraries imported by this process (torch,
    datasets, ...) patch stdlib modules, which would make the corpus differ between the
    driver and the workers and break the shared train/eval split.
    """
    out = subprocess.run(
        [sys.executable, "-I", __file__], check=True, capture_output=True, text=True
    ).stdout
    sentences = json.loads(out)
    return sentences if limit is None else sentences[:limit]


# Function words dropped by the keyword task (a fixed list, so the task is reproducible).
_STOPWORDS = frozenset(
    """a an the and or but if then else of to in on at by for with from into onto as is are
    was were be been being it its this that these those there here which who whom whose what
    when where while than so such not no can could may might must shall should will would do
    does did done has have had having any all each every some other same also only just more
    most very too you your we our they their he she his her them us i me my""".split()
)


def keyword_target(sentence: str) -> str:
    """The sentence's content words, lower-cased, in order: a deletion-based compression
    target for the offline seq2seq task `builtin:docstring-keywords`."""
    words = (w.strip(".,;:!?()'\"").lower() for w in sentence.split())
    return " ".join(w for w in words if w and w not in _STOPWORDS)


def keyword_pairs(limit: int | None = None) -> tuple[list[str], list[str]]:
    """(docstring sentences, their keyword compressions)."""
    sentences = docstring_sentences(limit)
    return sentences, [keyword_target(s) for s in sentences]


def _collect(min_words: int = 6, max_words: int = 60) -> list[str]:
    seen: set[str] = set()
    sentences: list[str] = []
    for module_name in _MODULES:
        for doc in _docstrings(module_name):
            for paragraph in doc.split("\n\n"):
                text = " ".join(paragraph.split())
                for sentence in _SENTENCE_END.split(text):
                    words = sentence.split()
                    if not (min_words <= len(words) <= max_words) or not _PROSE.match(sentence):
                        continue
                    if sentence not in seen:
                        seen.add(sentence)
                        sentences.append(sentence)
    return sentences


if __name__ == "__main__":
    print(json.dumps(_collect()))
