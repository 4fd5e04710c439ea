#!/usr/bin/env python3
"""Data preparation for the WMT reproduction (scripts/wmt/run.sh): every URL in one place,
download, extraction, pure-python cleaning, SentencePiece and hypothesis decoding.

Sub-commands (``python scripts/wmt/wmt_data.py COMMAND -h`` for each):

  urls          print the archives a pair needs, with their URLs
  download      fetch the missing archives into a folder (the only step that needs a network)
  extract       archives -> RAW/{train,valid,test,clean}.{src,tgt} plain text
  copy-local    a folder that already holds that plain-text layout -> RAW
  clean         normalise every split; length/ratio filter and dedupe the training split
  spm-train     a joint SentencePiece model on both sides of the cleaned training split
  spm-encode    encode every split with it
  hyps          fairseq-generate output -> detokenised hypotheses in test-set order

Nothing here imports torch or fairseq, so each call starts in well under a second.
"""

import argparse
import gzip
import hashlib
import io
import os
import re
import shutil
import sys
import tarfile
import time
import unicodedata
import urllib.error
import urllib.request
from dataclasses import dataclass
from functools import lru_cache
from itertools import zip_longest
from multiprocessing import Pool
from typing import Dict, Iterable, Iterator, List, Optional, Sequence, TextIO, Tuple

# ---------------------------------------------------------------------------------------
# The data: every URL of the recipe is in this section and nowhere else.
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Archive:
    """A file to download once into the download folder (shared by all pairs)."""

    filename: str
    url: Optional[str]  # None: not downloadable without a registration; fetch by hand
    md5: Optional[str] = None  # known for the test-set archives (from sacrebleu's table)
    note: str = ""


@dataclass(frozen=True)
class Source:
    """One parallel corpus or test set inside an archive, oriented as (src, tgt).

    kind:
      ``text``   two plain-text members, one segment a line
      ``gztext`` two gzipped plain-text members (inside a tar)
      ``sgm``    two WMT "fake SGML" members (``<seg id="..">text</seg>`` lines)
      ``tsv``    the archive itself is a gzipped TSV; ``columns`` = (src column, tgt column)
    """

    name: str
    archive: str
    kind: str
    members: Tuple[str, ...] = ()
    columns: Tuple[int, int] = (0, 1)
    optional: bool = False  # skipped with a warning when its archive is missing


STATMT = "https://statmt.org"
DATA_STATMT = "https://data.statmt.org"

ARCHIVES: Dict[str, Archive] = {
    a.filename: a
    for a in [
        # --- training corpora (WMT13/14/17 as in fairseq's examples/translation/prepare-wmt14*)
        Archive("training-parallel-europarl-v7.tgz",
                f"{STATMT}/wmt13/training-parallel-europarl-v7.tgz"),
        Archive("training-parallel-commoncrawl.tgz",
                f"{STATMT}/wmt13/training-parallel-commoncrawl.tgz"),
        Archive("training-parallel-un.tgz", f"{STATMT}/wmt13/training-parallel-un.tgz"),
        Archive("training-parallel-nc-v9.tgz", f"{STATMT}/wmt14/training-parallel-nc-v9.tgz"),
        Archive("training-parallel-nc-v12.tgz",
                f"{DATA_STATMT}/wmt17/translation-task/training-parallel-nc-v12.tgz"),
        Archive("training-giga-fren.tar", f"{STATMT}/wmt10/training-giga-fren.tar"),
        # --- WMT20 En-Zh training corpora that need no registration
        Archive("news-commentary-v15.en-zh.tsv.gz",
                f"{DATA_STATMT}/news-commentary/v15/training/news-commentary-v15.en-zh.tsv.gz"),
        Archive("wikititles-v2.zh-en.tsv.gz",
                f"{DATA_STATMT}/wikititles/v2/wikititles-v2.zh-en.tsv.gz"),
        Archive("WikiMatrix.en-zh.tsv.gz",
                "https://dl.fbaipublicfiles.com/laser/WikiMatrix/v1/WikiMatrix.en-zh.tsv.gz"),
        Archive("UNv1.0.en-zh.tar.gz", None,
                note="United Nations Parallel Corpus v1.0 (https://conferences.unite.un.org/"
                "uncorpus): download the en-zh parts by hand, join them with "
                "'cat UNv1.0.en-zh.tar.gz.0* > UNv1.0.en-zh.tar.gz' and put the file in the "
                "download folder; it is used when present"),
        # --- news test sets (URLs and md5 sums as in sacrebleu's dataset table)
        Archive("wmt12-test.tgz", f"{STATMT}/wmt12/test.tgz",
                "608232d34ebc4ba2ff70fead45674e47"),
        Archive("wmt13-test.tgz", f"{STATMT}/wmt13/test.tgz",
                "48eca5d02f637af44e85186847141f67"),
        Archive("wmt14-test-full.tgz", f"{STATMT}/wmt14/test-full.tgz",
                "a8cd784e006feb32ac6f3d9ec7eb389a"),
        Archive("wmt18-test.tgz", f"{DATA_STATMT}/wmt18/translation-task/test.tgz",
                "f996c245ecffea23d0006fa4c34e9064"),
        Archive("wmt19-test.tgz", f"{DATA_STATMT}/wmt19/translation-task/test.tgz",
                "84de7162d158e28403103b01aeefc39a"),
        Archive("wmt20-test.tgz", f"{DATA_STATMT}/wmt20/translation-task/test.tgz",
                "3b1f777cfd2fb15ccf66e9bfdb2b1699"),
    ]
}


def _newstest_old(year: int, src: str, tgt: str) -> Source:
    # newstest2012/2013 ship one multi-way file per language ("-src.LANG.sgm").
    return Source(f"newstest{year}", f"wmt{year % 100}-test.tgz", "sgm",
                  (f"test/newstest{year}-src.{src}.sgm", f"test/newstest{year}-src.{tgt}.sgm"))


def _newstest(year: int, archive: str, folder: str, src: str, tgt: str, tag: str) -> Source:
    return Source(f"newstest{year}", archive, "sgm",
                  (f"{folder}/newstest{year}-{tag}-src.{src}.sgm",
                   f"{folder}/newstest{year}-{tag}-ref.{tgt}.sgm"))


# Per pair: the training corpora (concatenated in this order) and the three news test sets.
PAIRS: Dict[str, Dict[str, object]] = {
    "en-de": {
        "description": "WMT14 En-De training data as in fairseq's prepare-wmt14en2de.sh "
        "(Europarl v7, Common Crawl, News Commentary v12; about 4.5M pairs)",
        "train": [
            Source("europarl-v7", "training-parallel-europarl-v7.tgz", "text",
                   ("training/europarl-v7.de-en.en", "training/europarl-v7.de-en.de")),
            Source("commoncrawl", "training-parallel-commoncrawl.tgz", "text",
                   ("commoncrawl.de-en.en", "commoncrawl.de-en.de")),
            Source("news-commentary-v12", "training-parallel-nc-v12.tgz", "text",
                   ("training/news-commentary-v12.de-en.en",
                    "training/news-commentary-v12.de-en.de")),
        ],
        "clean": _newstest_old(2012, "en", "de"),
        "valid": _newstest_old(2013, "en", "de"),
        "test": _newstest(2014, "wmt14-test-full.tgz", "test-full", "en", "de", "deen"),
    },
    "en-fr": {
        "description": "WMT14 En-Fr training data as in fairseq's prepare-wmt14en2fr.sh "
        "(Europarl v7, Common Crawl, UN 2000, News Commentary v9, 10^9 French-English "
        "corpus; about 36M pairs)",
        "train": [
            Source("europarl-v7", "training-parallel-europarl-v7.tgz", "text",
                   ("training/europarl-v7.fr-en.en", "training/europarl-v7.fr-en.fr")),
            Source("commoncrawl", "training-parallel-commoncrawl.tgz", "text",
                   ("commoncrawl.fr-en.en", "commoncrawl.fr-en.fr")),
            Source("un-2000", "training-parallel-un.tgz", "text",
                   ("un/undoc.2000.fr-en.en", "un/undoc.2000.fr-en.fr")),
            Source("news-commentary-v9", "training-parallel-nc-v9.tgz", "text",
                   ("training/news-commentary-v9.fr-en.en",
                    "training/news-commentary-v9.fr-en.fr")),
            Source("giga-fren", "training-giga-fren.tar", "gztext",
                   ("giga-fren.release2.fixed.en.gz", "giga-fren.release2.fixed.fr.gz")),
        ],
        "clean": _newstest_old(2012, "en", "fr"),
        "valid": _newstest_old(2013, "en", "fr"),
        "test": _newstest(2014, "wmt14-test-full.tgz", "test-full", "en", "fr", "fren"),
    },
    "en-zh": {
        "description": "WMT20 En-Zh constrained training data that needs no registration "
        "(News Commentary v15, Wiki Titles v2, WikiMatrix v1; UN v1.0 when placed by hand; "
        "the CWMT/CCMT corpora are not included)",
        "train": [
            Source("news-commentary-v15", "news-commentary-v15.en-zh.tsv.gz", "tsv",
                   columns=(0, 1)),
            Source("wikititles-v2", "wikititles-v2.zh-en.tsv.gz", "tsv", columns=(1, 0)),
            Source("wikimatrix-v1", "WikiMatrix.en-zh.tsv.gz", "tsv", columns=(1, 2)),
            Source("un-v1.0", "UNv1.0.en-zh.tar.gz", "text",
                   ("en-zh/UNv1.0.en-zh.en", "en-zh/UNv1.0.en-zh.zh"), optional=True),
        ],
        "clean": _newstest(2018, "wmt18-test.tgz", "test", "en", "zh", "enzh"),
        "valid": _newstest(2019, "wmt19-test.tgz", "sgm", "en", "zh", "enzh"),
        "test": _newstest(2020, "wmt20-test.tgz", "sgm", "en", "zh", "enzh"),
    },
}

SPLITS = ("train", "valid", "test", "clean")


def pair_langs(pair: str) -> Tuple[str, str]:
    if pair not in PAIRS:
        raise SystemExit(f"unknown pair {pair!r}: choose one of {', '.join(PAIRS)}")
    src, tgt = pair.split("-")
    return src, tgt


def pair_sources(pair: str) -> List[Source]:
    spec = PAIRS[pair]
    return list(spec["train"]) + [spec[s] for s in ("clean", "valid", "test")]  # type: ignore


def log(message: str) -> None:
    print(f"[wmt_data] {message}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------
# download
# ---------------------------------------------------------------------------------------


def md5sum(path: str) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def download(url: str, path: str) -> None:
    partial = path + ".part"
    log(f"downloading {url}")
    start = time.time()
    with urllib.request.urlopen(url, timeout=60) as response, open(partial, "wb") as out:
        total = int(response.headers.get("Content-Length") or 0)
        done, last = 0, 0.0
        for block in iter(lambda: response.read(1 << 20), b""):
            out.write(block)
            done += len(block)
            if time.time() - last > 30:
                last = time.time()
                share = f" of {total / 1e6:.0f}" if total else ""
                log(f"  {done / 1e6:.0f}{share} MB")
    os.replace(partial, path)
    log(f"  {done / 1e6:.1f} MB in {time.time() - start:.0f} s -> {path}")


def cmd_urls(args: argparse.Namespace) -> None:
    print(f"# {args.pair}: {PAIRS[args.pair]['description']}")
    seen = set()
    for source in pair_sources(args.pair):
        archive = ARCHIVES[source.archive]
        if archive.filename in seen:
            continue
        seen.add(archive.filename)
        print(f"{archive.filename}\t{archive.url or 'BY HAND: ' + archive.note}")


def cmd_download(args: argparse.Namespace) -> None:
    os.makedirs(args.dir, exist_ok=True)
    missing_required = []
    for source in pair_sources(args.pair):
        archive = ARCHIVES[source.archive]
        path = os.path.join(args.dir, archive.filename)
        if os.path.exists(path):
            log(f"have {path}")
            continue
        if archive.url is None:
            message = f"{archive.filename} is not downloaded automatically: {archive.note}"
            if source.optional:
                log(f"optional, skipped: {message}")
                continue
            missing_required.append(message)
            continue
        try:
            download(archive.url, path)
        except (OSError, urllib.error.URLError) as error:  # no network, HTTP error, ...
            raise SystemExit(
                f"cannot download {archive.url}: {error}\nWithout a network here, fetch the "
                f"files listed by 'python scripts/wmt/wmt_data.py urls --pair {args.pair}' "
                f"elsewhere, put them in one folder and pass it with --local DIR (or "
                f"--download-dir DIR)"
            ) from None
        if archive.md5 and md5sum(path) != archive.md5:
            bad = path + ".bad-md5"
            os.replace(path, bad)
            raise SystemExit(f"md5 mismatch for {archive.url} (expected {archive.md5}); "
                             f"kept as {bad}")
    if missing_required:
        raise SystemExit("\n".join(missing_required))


# ---------------------------------------------------------------------------------------
# extract
# ---------------------------------------------------------------------------------------

SEG = re.compile(r"<seg[^>]*>(.*)</seg>")


def sgm_lines(stream: Iterable[str]) -> Iterator[str]:
    """Segments of a WMT fake-SGML file, cleaned the way sacrebleu cleans them."""
    for line in stream:
        if line.startswith("<seg "):
            match = SEG.search(line)
            yield re.sub(r"\s+", " ", (match.group(1) if match else "").strip())


def _member_index(names: Sequence[str], wanted: str) -> str:
    """The archive member for ``wanted``: the exact path, else a unique basename match."""
    if wanted in names:
        return wanted
    base = os.path.basename(wanted)
    candidates = [n for n in names if os.path.basename(n) == base]
    if len(candidates) == 1:
        return candidates[0]
    similar = [n for n in names if base.split(".")[0] in n][:20]
    raise SystemExit(f"member {wanted!r} not found (or ambiguous: {candidates}); "
                     f"similar members: {similar}")


def extract_members(archive_path: str, members: Sequence[str], out_dir: str) -> List[str]:
    """Extract ``members`` of a tar archive into ``out_dir`` in one sequential pass
    (the archives are large gzip streams: no random access). Returns the output paths,
    in the order of ``members``; skips members already extracted."""
    targets = [os.path.join(out_dir, m.replace("/", "__")) for m in members]
    todo = {m: t for m, t in zip(members, targets) if not os.path.exists(t)}
    if not todo:
        return targets
    os.makedirs(out_dir, exist_ok=True)
    log(f"reading {archive_path} for {', '.join(todo)}")
    with tarfile.open(archive_path, mode="r|*") as tar:
        names = []
        remaining = dict(todo)
        for info in tar:
            names.append(info.name)
            if not info.isfile():
                continue
            wanted = [m for m in remaining
                      if info.name == m or info.name.endswith("/" + m)
                      or os.path.basename(info.name) == os.path.basename(m)]
            if not wanted:
                continue
            member = wanted[0]
            source = tar.extractfile(info)
            assert source is not None
            partial = remaining[member] + ".part"
            with open(partial, "wb") as out:
                shutil.copyfileobj(source, out, 1 << 20)
            os.replace(partial, remaining.pop(member))
            if not remaining:
                break
    if remaining:
        for member in remaining:
            _member_index(names, member)  # raises with the list of similar names
    return targets


def _open_text(path: str) -> TextIO:
    if path.endswith(".gz"):
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8", errors="replace",
                                newline="\n")
    return open(path, encoding="utf-8", errors="replace", newline="\n")


def source_pairs(source: Source, download_dir: str, scratch: str) -> Iterator[Tuple[str, str]]:
    """The (src, tgt) segment pairs of one corpus or test set."""
    archive = os.path.join(download_dir, source.archive)
    if source.kind == "tsv":
        with _open_text(archive) as f:
            for line in f:
                fields = line.rstrip("\n").split("\t")
                if len(fields) > max(source.columns):
                    yield fields[source.columns[0]], fields[source.columns[1]]
        return
    paths = extract_members(archive, source.members, os.path.join(scratch, source.archive))
    with _open_text(paths[0]) as fs, _open_text(paths[1]) as ft:
        if source.kind == "sgm":
            src_lines, tgt_lines = list(sgm_lines(fs)), list(sgm_lines(ft))
        else:
            src_lines, tgt_lines = fs, ft  # type: ignore[assignment]
        for count, (s, t) in enumerate(zip_longest(src_lines, tgt_lines), 1):
            if s is None or t is None:
                raise SystemExit(f"{source.name}: {paths[0]} and {paths[1]} differ in "
                                 f"length (line {count})")
            yield s.rstrip("\n"), t.rstrip("\n")


def _write_split(pairs: Iterable[Tuple[str, str]], prefix: str, src: str, tgt: str,
                 limit: int = 0) -> int:
    count = 0
    with open(f"{prefix}.{src}.part", "w", encoding="utf-8") as fs, \
            open(f"{prefix}.{tgt}.part", "w", encoding="utf-8") as ft:
        for s, t in pairs:
            if limit and count >= limit:
                break
            # a segment must stay one line: embedded newlines/CRs would misalign the sides
            fs.write(s.replace("\r", " ").replace("\n", " ") + "\n")
            ft.write(t.replace("\r", " ").replace("\n", " ") + "\n")
            count += 1
    os.replace(f"{prefix}.{src}.part", f"{prefix}.{src}")
    os.replace(f"{prefix}.{tgt}.part", f"{prefix}.{tgt}")
    return count


def cmd_extract(args: argparse.Namespace) -> None:
    src, tgt = pair_langs(args.pair)
    spec = PAIRS[args.pair]
    os.makedirs(args.out, exist_ok=True)
    # members are extracted next to the output (the download folder may be read-only) and
    # deleted once the splits are written
    scratch = os.path.join(args.out, ".extracted")
    report = [f"pair {args.pair}: {spec['description']}"]
    missing = sorted({source.archive for source in pair_sources(args.pair)
                      if not source.optional
                      and not os.path.exists(os.path.join(args.download_dir, source.archive))})
    if missing:
        raise SystemExit(
            f"missing in {args.download_dir}: {', '.join(missing)}. Run the download stage "
            f"(or copy the archives there); for local plain text instead, provide "
            f"{{train,valid,test,clean}}.{{{src},{tgt}}}"
        )

    def train_pairs() -> Iterator[Tuple[str, str]]:
        for source in spec["train"]:  # type: ignore[attr-defined]
            if not os.path.exists(os.path.join(args.download_dir, source.archive)):
                log(f"optional corpus {source.name} skipped: no {source.archive}")
                report.append(f"train: {source.name}: skipped (no {source.archive})")
                continue
            n = 0
            for item in source_pairs(source, args.download_dir, scratch):
                n += 1
                yield item
            log(f"train: {source.name}: {n} pairs")
            report.append(f"train: {source.name} ({source.archive}): {n} pairs")

    for split in ("clean", "valid", "test"):
        source: Source = spec[split]  # type: ignore[assignment]
        limit = args.clean_size if split == "clean" else 0
        n = _write_split(source_pairs(source, args.download_dir, scratch),
                         os.path.join(args.out, split), src, tgt, limit)
        log(f"{split}: {source.name}: {n} pairs")
        report.append(f"{split}: {source.name} ({source.archive}: {', '.join(source.members)})"
                      f": {n} pairs")
    n = _write_split(train_pairs(), os.path.join(args.out, "train"), src, tgt)
    report.append(f"train: {n} pairs in all")
    with open(os.path.join(args.out, "SOURCES.txt"), "w", encoding="utf-8") as f:
        f.write("\n".join(report) + "\n")
    shutil.rmtree(scratch, ignore_errors=True)
    log(f"train: {n} pairs in all -> {args.out}")


def count_lines(path: str) -> int:
    with open(path, "rb") as f:
        return sum(block.count(b"\n") for block in iter(lambda: f.read(1 << 20), b""))


def cmd_copy_local(args: argparse.Namespace) -> None:
    """Copy a plain-text layout (DIR/{train,valid,test,clean}.{src,tgt}) into RAW."""
    src, tgt = pair_langs(args.pair)
    os.makedirs(args.out, exist_ok=True)
    report = [f"pair {args.pair}: local files from {os.path.abspath(args.local)}"]
    for split in SPLITS:
        paths = [os.path.join(args.local, f"{split}.{lang}") for lang in (src, tgt)]
        missing = [p for p in paths if not os.path.exists(p)]
        if missing:
            raise SystemExit(f"--local {args.local}: missing {', '.join(missing)} (expected "
                             f"{{train,valid,test,clean}}.{{{src},{tgt}}}, one segment a line)")
        counts = [count_lines(p) for p in paths]
        if counts[0] != counts[1]:
            raise SystemExit(f"{paths[0]} has {counts[0]} lines but {paths[1]} has {counts[1]}")
        if counts[0] == 0:
            raise SystemExit(f"{paths[0]} is empty")
        limit = args.clean_size if split == "clean" else 0
        with open(paths[0], encoding="utf-8", errors="replace", newline="\n") as fs, \
                open(paths[1], encoding="utf-8", errors="replace", newline="\n") as ft:
            n = _write_split(((s.rstrip("\n"), t.rstrip("\n")) for s, t in zip(fs, ft)),
                             os.path.join(args.out, split), src, tgt, limit)
        report.append(f"{split}: {n} pairs")
        log(f"{split}: {n} pairs from {args.local}")
    with open(os.path.join(args.out, "SOURCES.txt"), "w", encoding="utf-8") as f:
        f.write("\n".join(report) + "\n")


# ---------------------------------------------------------------------------------------
# clean
# ---------------------------------------------------------------------------------------

# Languages written without spaces: lengths are counted in characters, not words.
CHARACTER_LANGS = {"zh", "ja", "th"}
# NFKC folds full-width punctuation (，：；？！) to ASCII, which the Chinese references do
# not: those languages get NFC (canonical composition only).
NFC_LANGS = {"zh", "ja"}
_SPACES = re.compile(r"\s+")


@lru_cache(maxsize=None)
def _drop_table() -> Dict[int, Optional[str]]:
    """Control, format, private-use and surrogate code points -> removed (tab -> space)."""
    table: Dict[int, Optional[str]] = dict.fromkeys(
        c for c in range(0x110000)
        if unicodedata.category(chr(c)) in ("Cc", "Cf", "Co", "Cs") and chr(c) not in "\t\n"
    )
    table[ord("\t")] = " "
    return table


def normalise(text: str, lang: str) -> str:
    """Unicode NFKC (NFC for zh/ja), drop control/format characters, squeeze whitespace."""
    text = unicodedata.normalize("NFC" if lang in NFC_LANGS else "NFKC", text)
    return _SPACES.sub(" ", text.translate(_drop_table())).strip()


def length(text: str, lang: str) -> int:
    if lang in CHARACTER_LANGS:
        return len(text.replace(" ", ""))
    return len(text.split())


@dataclass(frozen=True)
class Filter:
    src: str
    tgt: str
    min_len: int
    max_len: int
    max_ratio: float


def _clean_chunk(job: Tuple[Filter, List[Tuple[str, str]], bool]
                 ) -> Tuple[List[Optional[Tuple[str, str]]], Dict[str, int]]:
    """Normalise (and, for training data, filter) a chunk; None marks a dropped pair."""
    flt, pairs, apply_filters = job
    out: List[Optional[Tuple[str, str]]] = []
    dropped = {"empty": 0, "length": 0, "ratio": 0}
    for s, t in pairs:
        s, t = normalise(s, flt.src), normalise(t, flt.tgt)
        if apply_filters:
            ls, lt = length(s, flt.src), length(t, flt.tgt)
            if ls == 0 or lt == 0:
                dropped["empty"] += 1
                out.append(None)
                continue
            if not (flt.min_len <= ls <= flt.max_len and flt.min_len <= lt <= flt.max_len):
                dropped["length"] += 1
                out.append(None)
                continue
            if max(ls, lt) > flt.max_ratio * min(ls, lt) and max(ls, lt) > 3:
                dropped["ratio"] += 1
                out.append(None)
                continue
        out.append((s, t))
    return out, dropped


def _chunks(fs: TextIO, ft: TextIO, size: int) -> Iterator[List[Tuple[str, str]]]:
    chunk: List[Tuple[str, str]] = []
    for s, t in zip(fs, ft):
        chunk.append((s.rstrip("\n"), t.rstrip("\n")))
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def clean_split(in_prefix: str, out_prefix: str, flt: Filter, train: bool, dedupe: bool,
                workers: int) -> str:
    import numpy as np  # only needed here (dedupe of the training split)

    src, tgt = flt.src, flt.tgt
    stats = {"in": 0, "empty": 0, "length": 0, "ratio": 0, "duplicate": 0}
    hashes = bytearray()
    tmp_s, tmp_t = f"{out_prefix}.{src}.part", f"{out_prefix}.{tgt}.part"
    with open(f"{in_prefix}.{src}", encoding="utf-8", newline="\n") as fs, \
            open(f"{in_prefix}.{tgt}", encoding="utf-8", newline="\n") as ft, \
            open(tmp_s, "w", encoding="utf-8") as os_, open(tmp_t, "w", encoding="utf-8") as ot:
        jobs = ((flt, chunk, train) for chunk in _chunks(fs, ft, 20000))
        _drop_table()  # built once here, inherited by forked workers
        pool = Pool(workers) if workers > 1 else None
        try:
            results = pool.imap(_clean_chunk, jobs) if pool else map(_clean_chunk, jobs)
            for out, dropped in results:
                stats["in"] += len(out)
                for key, value in dropped.items():
                    stats[key] += value
                for item in out:
                    if item is None:
                        continue
                    os_.write(item[0] + "\n")
                    ot.write(item[1] + "\n")
                    if train and dedupe:
                        key = (item[0] + "\t" + item[1]).encode("utf-8")
                        hashes += hashlib.blake2b(key, digest_size=8).digest()
        finally:
            if pool:
                pool.close()
                pool.join()
    if train and dedupe and hashes:
        # keep the first occurrence of each (src, tgt) pair: a second pass over the file
        values = np.frombuffer(bytes(hashes), dtype=np.uint64)
        _, first = np.unique(values, return_index=True)
        keep = np.zeros(len(values), dtype=bool)
        keep[first] = True
        stats["duplicate"] = int(len(values) - keep.sum())
        for path in (tmp_s, tmp_t):
            with open(path, encoding="utf-8", newline="\n") as f, \
                    open(path + "2", "w", encoding="utf-8") as out:
                for line, k in zip(f, keep):
                    if k:
                        out.write(line)
            os.replace(path + "2", path)
    os.replace(tmp_s, f"{out_prefix}.{src}")
    os.replace(tmp_t, f"{out_prefix}.{tgt}")
    kept = stats["in"] - stats["empty"] - stats["length"] - stats["ratio"] - stats["duplicate"]
    lines = [f"{os.path.basename(out_prefix)}: {stats['in']} in, {kept} kept"]
    if train:
        lines.append(f"  dropped: empty {stats['empty']}, length {stats['length']}, "
                     f"ratio {stats['ratio']}, duplicate {stats['duplicate']}")
    return "\n".join(lines)


def cmd_clean(args: argparse.Namespace) -> None:
    src, tgt = pair_langs(args.pair)
    ratio = args.max_ratio
    if ratio is None:  # words against words, or words against characters
        ratio = 1.5 if not ({src, tgt} & CHARACTER_LANGS) else 3.0
    flt = Filter(src, tgt, args.min_len, args.max_len, ratio)
    os.makedirs(args.out, exist_ok=True)
    report = [f"normalisation: NFKC (NFC for {', '.join(sorted(NFC_LANGS))}), control and "
              f"format characters removed, whitespace squeezed",
              f"training filters: length {args.min_len}..{args.max_len} "
              f"(words; characters for {', '.join(sorted(CHARACTER_LANGS))}), "
              f"ratio <= {ratio}, dedupe {'on' if not args.no_dedupe else 'off'}"]
    for split in SPLITS:
        train = split == "train"
        line = clean_split(os.path.join(args.raw, split), os.path.join(args.out, split), flt,
                           train=train, dedupe=not args.no_dedupe, workers=args.workers)
        log(line.replace("\n", ";"))
        report.append(line)
    with open(os.path.join(args.out, "CLEANING.txt"), "w", encoding="utf-8") as f:
        f.write("\n".join(report) + "\n")


# ---------------------------------------------------------------------------------------
# SentencePiece
# ---------------------------------------------------------------------------------------


def cmd_spm_train(args: argparse.Namespace) -> None:
    import sentencepiece as spm

    src, tgt = pair_langs(args.pair)
    inputs = [os.path.join(args.data, f"train.{lang}") for lang in (src, tgt)]
    coverage = 0.9995 if {src, tgt} & CHARACTER_LANGS else 1.0
    os.makedirs(os.path.dirname(os.path.abspath(args.model_prefix)), exist_ok=True)
    log(f"training a joint {args.model_type} SentencePiece model ({args.vocab_size} pieces, "
        f"character coverage {coverage}) on {', '.join(inputs)}")
    spm.SentencePieceTrainer.train(
        input=inputs,
        model_prefix=args.model_prefix,
        vocab_size=args.vocab_size,
        model_type=args.model_type,
        character_coverage=coverage,
        input_sentence_size=args.input_sentence_size,
        shuffle_input_sentence=True,
        num_threads=args.workers,
        hard_vocab_limit=False,  # small corpora: at most vocab_size pieces
        bos_id=-1,  # fairseq adds its own <s>, </s>, <pad>, <unk>
        eos_id=-1,
        unk_id=0,
        minloglevel=1,
    )


def cmd_spm_encode(args: argparse.Namespace) -> None:
    import sentencepiece as spm

    src, tgt = pair_langs(args.pair)
    sp = spm.SentencePieceProcessor(model_file=args.model)
    os.makedirs(args.out, exist_ok=True)
    for split in SPLITS:
        for lang in (src, tgt):
            inp = os.path.join(args.data, f"{split}.{lang}")
            out = os.path.join(args.out, f"{split}.{lang}")
            with open(inp, encoding="utf-8") as f, open(out + ".part", "w",
                                                           encoding="utf-8") as o:
                while True:
                    lines = [line.rstrip("\n") for line in f.readlines(1 << 24)]
                    if not lines:
                        break
                    for pieces in sp.encode(lines, out_type=str, num_threads=args.workers):
                        o.write(" ".join(pieces) + "\n")
            os.replace(out + ".part", out)
        log(f"encoded {split}")


def cmd_hyps(args: argparse.Namespace) -> None:
    """H-<id>\\t<score>\\t<pieces> lines of fairseq-generate -> decoded text, in id order."""
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=args.model)
    hyps: Dict[int, str] = {}
    with open(args.gen, encoding="utf-8") as f:
        for line in f:
            if line.startswith("H-"):
                fields = line.rstrip("\n").split("\t")
                pieces = fields[2].split() if len(fields) > 2 else []
                hyps[int(fields[0][2:])] = sp.decode(pieces)
    if args.expect is not None and len(hyps) != args.expect:
        raise SystemExit(f"{args.gen}: {len(hyps)} hypotheses, expected {args.expect} "
                         f"(were test sentences skipped as too long?)")
    with open(args.out, "w", encoding="utf-8") as o:
        for i in range(len(hyps)):
            if i not in hyps:
                raise SystemExit(f"{args.gen}: no hypothesis for sentence {i}")
            o.write(hyps[i] + "\n")
    log(f"{len(hyps)} hypotheses -> {args.out}")


# ---------------------------------------------------------------------------------------


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    workers = max(1, min(8, os.cpu_count() or 1))

    def add(name: str, help_text: str, pair: bool = True) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text)
        if pair:
            p.add_argument("--pair", required=True, choices=sorted(PAIRS))
        return p

    add("urls", "print the archives of a pair with their URLs")
    p = add("download", "download the missing archives of a pair")
    p.add_argument("--dir", required=True, help="download folder")
    p = add("extract", "archives -> OUT/{train,valid,test,clean}.{src,tgt}")
    p.add_argument("--download-dir", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--clean-size", type=int, default=0, help="first N clean pairs (0: all)")
    p = add("copy-local", "DIR/{train,valid,test,clean}.{src,tgt} -> OUT")
    p.add_argument("--local", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--clean-size", type=int, default=0, help="first N clean pairs (0: all)")
    p = add("clean", "normalise all splits; filter and dedupe the training split")
    p.add_argument("--raw", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--min-len", type=int, default=1)
    p.add_argument("--max-len", type=int, default=250,
                   help="max words (characters for zh/ja/th) per side")
    p.add_argument("--max-ratio", type=float, default=None,
                   help="max length ratio (default 1.5; 3.0 when one side counts characters)")
    p.add_argument("--no-dedupe", action="store_true")
    p.add_argument("--workers", type=int, default=workers)
    p = add("spm-train", "train a joint SentencePiece model")
    p.add_argument("--data", required=True, help="folder with train.{src,tgt}")
    p.add_argument("--model-prefix", required=True)
    p.add_argument("--vocab-size", type=int, default=32000)
    p.add_argument("--model-type", default="unigram", choices=["unigram", "bpe"])
    p.add_argument("--input-sentence-size", type=int, default=10_000_000,
                   help="sentences sampled for training (both sides together)")
    p.add_argument("--workers", type=int, default=workers)
    p = add("spm-encode", "encode every split with a SentencePiece model")
    p.add_argument("--model", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--workers", type=int, default=workers)
    p = add("hyps", "fairseq-generate output -> decoded hypotheses", pair=False)
    p.add_argument("--gen", required=True)
    p.add_argument("--model", required=True, help="SentencePiece model")
    p.add_argument("--out", required=True)
    p.add_argument("--expect", type=int, default=None, help="number of test sentences")

    args = parser.parse_args(argv)
    {
        "urls": cmd_urls,
        "download": cmd_download,
        "extract": cmd_extract,
        "copy-local": cmd_copy_local,
        "clean": cmd_clean,
        "spm-train": cmd_spm_train,
        "spm-encode": cmd_spm_encode,
        "hyps": cmd_hyps,
    }[args.command](args)


if __name__ == "__main__":
    main()
