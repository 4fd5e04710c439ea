"""The WMT reproduction scripts (scripts/wmt/) and Hydra configs (configs/), end to end on a
tiny slice of local files: newstest2021 lines stand in for the WMT training data, clean,
valid and test sets; the model is a 1+1-layer 32-dim transformer trained for a few updates.

Needs ../shared/data (relative to the repository root); skipped without it.
"""

import gzip
import io
import os
import re
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
WMT21 = SHARED_DATA / "wmt21"
RUN = REPO / "scripts" / "wmt" / "run.sh"
CONFIGS = REPO / "configs"
USER_DIR = REPO / "gglm_fairseq"

sys.path.insert(0, str(REPO / "scripts" / "wmt"))
import wmt_data  # noqa: E402

BLEU_LINE = re.compile(r"BLEU\|nrefs:1\|.*\|tok:(\w+)\|.* = (\d+(\.\d+)?) ")
TINY_MODEL = [
    "model.encoder_layers=1", "model.decoder_layers=1",
    "model.encoder_embed_dim=32", "model.decoder_embed_dim=32",
    "model.encoder_ffn_embed_dim=64", "model.decoder_ffn_embed_dim=64",
    "model.encoder_attention_heads=2", "model.decoder_attention_heads=2",
]


def need_data() -> None:
    if not WMT21.is_dir():
        pytest.skip(f"no local data in {SHARED_DATA}")


def env() -> Dict[str, str]:
    """The environment of this interpreter's virtual environment (fairseq-* on PATH)."""
    e = dict(os.environ)
    e["PATH"] = os.path.dirname(sys.executable) + os.pathsep + e.get("PATH", "")
    e["PYTHON"] = sys.executable
    # one thread per process: the tiny models gain nothing from more, and on a small shared
    # machine extra threads only contend (a 50-sentence decode went from 13 s to 0.7 s)
    e["OMP_NUM_THREADS"] = "1"
    e["MKL_NUM_THREADS"] = "1"
    e.pop("GGLM_USER_DIR", None)
    return e


def run_sh(*args: str, check: bool = True, timeout: int = 300) -> subprocess.CompletedProcess:
    proc = subprocess.run(["bash", str(RUN), *args], env=env(), capture_output=True,
                          text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"run.sh {' '.join(args)} failed ({proc.returncode}):\n"
                             f"{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}")
    return proc


def read_lines(path: Path) -> List[str]:
    return path.read_text(encoding="utf-8").splitlines()


def squeeze(text: str) -> str:
    return re.sub(r"\s+", " ", text.strip())


def slice_newstest(out: Path, pair: str, sizes: Dict[str, int]) -> Path:
    """newstest2021 PAIR lines as DIR/{train,clean,valid,test}.{src,tgt} (disjoint slices)."""
    src, tgt = pair.split("-")
    src_lines = read_lines(WMT21 / f"newstest2021.{pair}.src.{src}")
    tgt_lines = read_lines(WMT21 / f"newstest2021.{pair}.ref.A.{tgt}")
    out.mkdir(parents=True, exist_ok=True)
    start = 0
    for split, n in sizes.items():
        for lang, lines in ((src, src_lines), (tgt, tgt_lines)):
            (out / f"{split}.{lang}").write_text("\n".join(lines[start:start + n]) + "\n",
                                                  encoding="utf-8")
        start += n
    return out


# ---------------------------------------------------------------------------------------
# wmt_data.py: normalisation and extraction from archives laid out like the real ones
# ---------------------------------------------------------------------------------------


def test_normalise_and_lengths() -> None:
    assert wmt_data.normalise("Ａｂｃ\u00ad  x\tＹ，\u200b ", "de") == "Abc x Y,"
    # Chinese keeps its full-width punctuation (the references use it): NFC, not NFKC
    assert wmt_data.normalise(" 你好，世界！\ufeff", "zh") == "你好，世界！"
    assert wmt_data.length("你好 世界", "zh") == 4
    assert wmt_data.length("hello big world", "en") == 3


def _sgm(lines: List[str]) -> str:
    segs = "".join(f'<seg id="{i}"> {line}  </seg>\n' for i, line in enumerate(lines, 1))
    return f'<srcset setid="x" srclang="any">\n<doc docid="d" genre="news">\n{segs}</doc>\n' \
           f"</srcset>\n"


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def fake_archives(folder: Path, pair: str, n_train: int = 12, n_eval: int = 12
                  ) -> Dict[str, Tuple[List[str], List[str]]]:
    """Every archive the pair needs, with its real member paths and format, filled with
    newstest2021 lines (n_train per training corpus, n_eval per test set); returns the
    expected (src, tgt) lines per source name."""
    src, tgt = pair.split("-")
    text_pair = "en-zh" if tgt == "zh" else "en-de"
    en = read_lines(WMT21 / f"newstest2021.{text_pair}.src.en")
    other = read_lines(WMT21 / f"newstest2021.{text_pair}.ref.A.{'zh' if tgt == 'zh' else 'de'}")
    train_names = {s.name for s in wmt_data.PAIRS[pair]["train"]}
    members: Dict[str, List[Tuple[str, bytes]]] = {}
    expected: Dict[str, Tuple[List[str], List[str]]] = {}
    folder.mkdir(parents=True, exist_ok=True)
    start = 0
    for source in wmt_data.pair_sources(pair):
        if source.optional:
            continue  # e.g. UN v1.0, placed by hand: absent here, so skipped
        n = n_train if source.name in train_names else n_eval
        s_lines, t_lines = en[start:start + n], other[start:start + n]
        start += n
        expected[source.name] = (s_lines, t_lines)
        if source.kind == "tsv":
            rows = []
            for s, t in zip(s_lines, t_lines):
                fields = ["1.07"] * (max(source.columns) + 1)
                fields[source.columns[0]], fields[source.columns[1]] = s, t
                rows.append("\t".join(fields))
            data = gzip.compress(("\n".join(rows) + "\n").encode("utf-8"))
            (folder / source.archive).write_bytes(data)
            continue
        for member, lines in zip(source.members, (s_lines, t_lines)):
            if source.kind == "sgm":
                data = _sgm(lines).encode("utf-8")
            else:
                data = ("\n".join(lines) + "\n").encode("utf-8")
                if source.kind == "gztext":
                    data = gzip.compress(data)
            members.setdefault(source.archive, []).append((member, data))
    for archive, files in members.items():
        mode = "w" if archive.endswith(".tar") else "w:gz"
        with tarfile.open(folder / archive, mode) as tar:
            _add(tar, "README", b"not a corpus\n")
            for member, data in files:
                _add(tar, member, data)
    return expected


@pytest.mark.parametrize("pair", ["en-de", "en-fr", "en-zh"])
def test_extract_from_archives(tmp_path: Path, pair: str) -> None:
    need_data()
    expected = fake_archives(tmp_path / "download", pair)
    archives = sorted(os.listdir(tmp_path / "download"))
    wmt_data.main(["extract", "--pair", pair, "--download-dir", str(tmp_path / "download"),
                   "--out", str(tmp_path / "raw"), "--clean-size", "5"])
    assert sorted(os.listdir(tmp_path / "download")) == archives  # nothing written there
    assert not (tmp_path / "raw" / ".extracted").exists()  # scratch removed
    src, tgt = pair.split("-")
    spec = wmt_data.PAIRS[pair]
    train = [name for name in expected if name in {s.name for s in spec["train"]}]
    want_src = [line for name in train for line in expected[name][0]]
    want_tgt = [line for name in train for line in expected[name][1]]
    assert read_lines(tmp_path / "raw" / f"train.{src}") == want_src
    assert read_lines(tmp_path / "raw" / f"train.{tgt}") == want_tgt
    for split in ("clean", "valid", "test"):
        name = spec[split].name
        s_lines, t_lines = expected[name]
        if split == "clean":
            s_lines, t_lines = s_lines[:5], t_lines[:5]
        # sgm segments come out stripped and with whitespace squeezed, as sacrebleu
        # extracts them
        assert read_lines(tmp_path / "raw" / f"{split}.{src}") == [squeeze(x) for x in s_lines]
        assert read_lines(tmp_path / "raw" / f"{split}.{tgt}") == [squeeze(x) for x in t_lines]
    sources = (tmp_path / "raw" / "SOURCES.txt").read_text()
    assert spec["test"].name in sources and "pairs in all" in sources
    if pair == "en-zh":
        assert "un-v1.0: skipped" in sources


def test_extract_reports_missing_archive(tmp_path: Path) -> None:
    need_data()
    fake_archives(tmp_path / "download", "en-de")
    os.remove(tmp_path / "download" / "training-parallel-commoncrawl.tgz")
    with pytest.raises(SystemExit, match="training-parallel-commoncrawl.tgz"):
        wmt_data.main(["extract", "--pair", "en-de", "--download-dir",
                       str(tmp_path / "download"), "--out", str(tmp_path / "raw")])


def test_urls_are_in_one_table() -> None:
    for pair in wmt_data.PAIRS:
        for source in wmt_data.pair_sources(pair):
            archive = wmt_data.ARCHIVES[source.archive]
            assert archive.url or source.optional, source
    text = (REPO / "scripts" / "wmt" / "run.sh").read_text()
    assert "http" not in text  # the URLs live in wmt_data.py only


def test_download_from_urls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The download code, offline: file:// URLs stand in for the real ones."""
    need_data()
    fake_archives(tmp_path / "origin", "en-de", 3, 3)
    table = {}
    for name, archive in wmt_data.ARCHIVES.items():
        origin = tmp_path / "origin" / name
        md5 = wmt_data.md5sum(str(origin)) if origin.exists() and archive.md5 else None
        table[name] = wmt_data.Archive(name, origin.as_uri(), md5)
    monkeypatch.setattr(wmt_data, "ARCHIVES", table)
    wmt_data.main(["download", "--pair", "en-de", "--dir", str(tmp_path / "dl")])
    for source in wmt_data.pair_sources("en-de"):
        assert (tmp_path / "dl" / source.archive).read_bytes() == \
            (tmp_path / "origin" / source.archive).read_bytes()
    wmt_data.main(["download", "--pair", "en-de", "--dir", str(tmp_path / "dl")])  # no-op
    # a corrupt download is caught by its md5 sum and kept aside
    name = "wmt14-test-full.tgz"
    table[name] = wmt_data.Archive(name, (tmp_path / "origin" / name).as_uri(), "0" * 32)
    os.remove(tmp_path / "dl" / name)
    with pytest.raises(SystemExit, match="md5 mismatch"):
        wmt_data.main(["download", "--pair", "en-de", "--dir", str(tmp_path / "dl")])
    assert (tmp_path / "dl" / f"{name}.bad-md5").exists()
    table[name] = wmt_data.Archive(name, (tmp_path / "nowhere.tgz").as_uri())
    with pytest.raises(SystemExit, match="cannot download"):
        wmt_data.main(["download", "--pair", "en-de", "--dir", str(tmp_path / "dl")])


# ---------------------------------------------------------------------------------------
# run.sh
# ---------------------------------------------------------------------------------------


def test_run_sh_usage_and_errors(tmp_path: Path) -> None:
    proc = run_sh("-h")
    assert "Usage: scripts/wmt/run.sh --pair" in proc.stdout and "--local DIR" in proc.stdout
    proc = run_sh("--pair", "en-xx", check=False)
    assert proc.returncode != 0 and "--pair must be en-de, en-fr or en-zh" in proc.stderr
    proc = run_sh("--pair", "en-de", "--local", str(tmp_path / "nope"), check=False)
    assert proc.returncode != 0 and "is not a folder" in proc.stderr
    proc = run_sh("--pair", "en-de", "--stage", "eval", "--work", str(tmp_path / "w"),
                  check=False)
    assert proc.returncode != 0 and "run --stage train first" in proc.stderr
    (tmp_path / "local").mkdir()
    proc = run_sh("--pair", "en-de", "--stage", "prepare", "--local", str(tmp_path / "local"),
                  "--work", str(tmp_path / "w"), check=False)
    assert proc.returncode != 0 and "missing" in proc.stderr


@pytest.fixture(scope="module")
def en_de_run(tmp_path_factory: pytest.TempPathFactory) -> Tuple[Path, str]:
    """The whole pipeline once, both systems, from local plain-text files."""
    need_data()
    root = tmp_path_factory.mktemp("wmt_en_de")
    local = slice_newstest(root / "local", "en-de",
                           {"train": 300, "clean": 50, "valid": 50, "test": 50})
    proc = run_sh("--pair", "en-de", "--local", str(local), "--work", str(root / "work"),
                  "--model", "tiny", "--max-update", "4", "--vocab-size", "400",
                  "--workers", "1")
    return root / "work" / "en-de", proc.stdout + proc.stderr


def test_end_to_end_en_de(en_de_run: Tuple[Path, str]) -> None:
    work, log = en_de_run
    for stage in ("download: skipped", "prepare/raw", "prepare/clean", "prepare/spm",
                  "prepare/encode", "prepare/binarise", "train/baseline", "train/gglm",
                  "eval/baseline", "eval/gglm"):
        assert f"] {stage}" in log, stage
    for split in ("train", "valid", "test", "clean"):
        for lang in ("en", "de"):
            assert (work / "raw" / f"{split}.{lang}").stat().st_size > 0
            assert (work / "clean" / f"{split}.{lang}").stat().st_size > 0
            assert (work / "encoded" / f"{split}.{lang}").stat().st_size > 0
            assert (work / "data-bin" / f"{split}.en-de.{lang}.bin").stat().st_size > 0
    assert not list((work / "data-bin").glob("valid1.*"))  # renamed to clean.*
    assert (work / "data-bin" / "dict.en.txt").read_text() == \
        (work / "data-bin" / "dict.de.txt").read_text()  # one joined dictionary
    assert (work / "spm" / "spm.model").exists()
    assert "dropped:" in (work / "clean" / "CLEANING.txt").read_text()
    assert len(read_lines(work / "clean" / "clean.en")) == 50  # clean set is not filtered
    for system in ("baseline", "gglm"):
        ckpt = work / "checkpoints" / f"tiny-{system}"
        assert (ckpt / "checkpoint_last.pt").exists() and (ckpt / "train.done").exists()
        assert (ckpt / "checkpoint_1_2.pt").exists() and (ckpt / "checkpoint_1_4.pt").exists()
        out = work / "eval" / f"tiny-{system}"
        assert (out / "checkpoint_avg.pt").exists()
        assert len(read_lines(out / "hyp.test.de")) == 50  # every test sentence translated
        bleu = (out / "bleu.txt").read_text()
        match = BLEU_LINE.search(bleu)
        assert match and match.group(1) == "13a", bleu
        assert "chrF2|" in bleu
    train_log = (work / "checkpoints" / "tiny-gglm" / "train.log").read_text()
    assert "gglm_active 1" in train_log and "gglm_masked_sent" in train_log
    assert "gglm_active" not in (work / "checkpoints" / "tiny-baseline" / "train.log").read_text()
    results = read_lines(work / "results.txt")
    assert [r.split()[:3] for r in results] == [["en-de", "tiny", "baseline"],
                                                ["en-de", "tiny", "gglm"]]
    assert all(BLEU_LINE.search(r) for r in results)
    assert "BLEU|nrefs:1" in log  # the score and its signature are printed


def test_stages_are_idempotent(en_de_run: Tuple[Path, str]) -> None:
    work, _ = en_de_run
    local = work.parent.parent / "local"
    proc = run_sh("--pair", "en-de", "--local", str(local), "--work", str(work.parent),
                  "--model", "tiny", "--max-update", "4", "--vocab-size", "400", timeout=60)
    log = proc.stderr
    for step in ("raw", "clean", "spm", "encode", "binarise"):
        assert f"prepare/{step}: have" in log
    assert "train/baseline: have" in log and "train/gglm: have" in log
    assert "eval/baseline: have" in log and "eval/gglm: have" in log
    assert "INFO" not in log  # no fairseq command ran
    assert len(read_lines(work / "results.txt")) == 2


def test_average_checkpoints_is_the_mean(en_de_run: Tuple[Path, str]) -> None:
    import average_checkpoints
    import torch

    work, _ = en_de_run
    ckpt = work / "checkpoints" / "tiny-gglm"
    a = average_checkpoints.load_checkpoint(str(ckpt / "checkpoint_1_2.pt"))["model"]
    b = average_checkpoints.load_checkpoint(str(ckpt / "checkpoint_1_4.pt"))["model"]
    avg = average_checkpoints.load_checkpoint(
        str(work / "eval" / "tiny-gglm" / "checkpoint_avg.pt"))
    assert set(avg["model"]) == set(a)
    for key, value in avg["model"].items():
        if value.is_floating_point():
            torch.testing.assert_close(value, (a[key] + b[key]) / 2)
    assert "cfg" in avg  # loads like a fairseq checkpoint
    found = average_checkpoints.find_checkpoints(str(ckpt), 5)
    assert [os.path.basename(p) for p in found] == ["checkpoint_1_2.pt", "checkpoint_1_4.pt"]


def test_end_to_end_en_zh_from_archives(tmp_path: Path) -> None:
    """--local with the archives the download stage would fetch (laid out like the real
    ones), a Chinese target: NFC (full-width punctuation kept), character coverage, BLEU
    with --tokenize zh. One system keeps it short."""
    need_data()
    fake_archives(tmp_path / "archives", "en-zh", n_train=100, n_eval=50)
    proc = run_sh("--pair", "en-zh", "--local", str(tmp_path / "archives"),
                  "--work", str(tmp_path / "work"), "--model", "tiny", "--max-update", "2",
                  "--vocab-size", "2000", "--clean-size", "40", "--system", "gglm",
                  "--workers", "1")
    work = tmp_path / "work" / "en-zh"
    assert "extracting from the archives" in proc.stderr
    sources = (work / "raw" / "SOURCES.txt").read_text()
    assert "train: 300 pairs in all" in sources and "un-v1.0: skipped" in sources
    assert len(read_lines(work / "raw" / "clean.zh")) == 40
    assert "，" in (work / "clean" / "test.zh").read_text(encoding="utf-8")
    assert len(read_lines(work / "eval" / "tiny-gglm" / "hyp.test.zh")) == 50
    match = BLEU_LINE.search((work / "eval" / "tiny-gglm" / "bleu.txt").read_text())
    assert match and match.group(1) == "zh"
    assert "tok:zh" in proc.stdout
    assert not (work / "checkpoints" / "tiny-baseline").exists()


# ---------------------------------------------------------------------------------------
# configs/ (fairseq-hydra-train)
# ---------------------------------------------------------------------------------------

CONFIG_NAMES = ["wmt_transformer_base_gglm", "wmt_transformer_base_baseline",
                "wmt_transformer_big_gglm", "wmt_transformer_big_baseline"]


def _compose(name: str, overrides: Optional[List[str]] = None):
    from fairseq.dataclass.initialize import add_defaults, hydra_init
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    hydra_init(name)
    with initialize_config_dir(config_dir=str(CONFIGS), version_base=None):
        cfg = compose(config_name=name, overrides=["task.data=/nowhere", *(overrides or [])])
    add_defaults(cfg)
    return cfg


@pytest.mark.filterwarnings("ignore::UserWarning")  # hydra's deprecation notices
@pytest.mark.parametrize("name", CONFIG_NAMES)
def test_configs_compose(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GGLM_USER_DIR", raising=False)
    from fairseq.models import ARCH_CONFIG_REGISTRY
    from omegaconf import open_dict

    import gglm_fairseq  # noqa: F401  (registers the task and the criterion)
    from gglm_fairseq.criterions.gradient_masked_cross_entropy import (
        GradientMaskedCrossEntropyConfig,
    )
    from gglm_fairseq.tasks.translation_with_clean_set import TranslationWithCleanSetConfig

    cfg = _compose(name)
    gglm = name.endswith("_gglm")
    assert cfg.task._name == ("translation_with_clean_set" if gglm else "translation")
    assert cfg.criterion._name == (
        "gradient_masked_cross_entropy" if gglm else "label_smoothed_cross_entropy")
    assert cfg.criterion.label_smoothing == 0.1
    assert cfg.common.user_dir == "gglm_fairseq"
    if gglm:  # every key in the yaml is an option of the plugin
        task_fields = set(TranslationWithCleanSetConfig.__dataclass_fields__)
        crit_fields = set(GradientMaskedCrossEntropyConfig.__dataclass_fields__)
        assert set(cfg.task) - {"_name"} <= task_fields
        assert set(cfg.criterion) - {"_name"} <= crit_fields
    model = cfg.model
    with open_dict(model):
        ARCH_CONFIG_REGISTRY[model._name](model)
    big = "_big_" in name
    assert model.encoder_embed_dim == (1024 if big else 512)
    assert model.decoder_ffn_embed_dim == (4096 if big else 2048)
    assert model.encoder_attention_heads == (16 if big else 8)
    assert model.encoder_layers == 6 and model.share_all_embeddings
    assert model.dropout == (0.3 if big else 0.1)


def test_hydra_config_starts_training(en_de_run: Tuple[Path, str], tmp_path: Path) -> None:
    """fairseq-hydra-train with configs/wmt_transformer_base_gglm.yaml, shrunk to the tiny
    model, on the binarised set of the en-de run: two GGLM updates and a checkpoint."""
    work, _ = en_de_run
    save = tmp_path / "ckpt"
    cmd = ["fairseq-hydra-train", "--config-dir", str(CONFIGS),
           "--config-name", "wmt_transformer_base_gglm",
           f"task.data={work / 'data-bin'}", f"checkpoint.save_dir={save}",
           "optimization.max_update=2", "optimization.update_freq=[1]",
           "dataset.max_tokens=1000", "common.cpu=true", *TINY_MODEL]
    # the plugin is found through GGLM_USER_DIR (the config's default for common.user_dir)
    proc = subprocess.run(cmd, cwd=tmp_path, env={**env(), "GGLM_USER_DIR": str(USER_DIR)},
                          capture_output=True, text=True, timeout=300)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-6000:]
    assert "num_updates: 2 >= max_update: 2" in log
    assert re.search(r"gglm_active 1 \|", log), log[-3000:]
    assert (save / "checkpoint_last.pt").exists()
    assert not (tmp_path / ".hydra").exists() and not list(tmp_path.glob("*.log"))
