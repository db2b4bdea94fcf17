"""Corpora in the field's formats, written here from packaged text: JSON lines (plain, gzip, multi-frame zstandard),
Parquet, saved and local-files Hugging Face datasets, plain text files; globs, folders, a configurable text field,
metadata kept; bad inputs fail naming the file (and line) and leave no shard that looks complete."""
from __future__ import annotations

import gzip
import os
import random
import re
import subprocess
import tracemalloc

import pytest

from proxy_exp.config import CorpusConfig, TokenizeConfig
from proxy_exp.data.corpora import read_documents
from proxy_exp.data.readers import input_files, iter_file
from proxy_exp.data.shards import source_inputs, tokenize_inputs

from tests.helpers import packaged_records, run_cli, write_jsonl, write_parquet  # noqa: E402

RECORDS = packaged_records("wikipedia", 120)


def _src(source, paths, **kw) -> CorpusConfig:
    return CorpusConfig(name="t", source=source, paths=[str(p) for p in paths], **kw)


def _docs(src) -> list:
    return [d for path in input_files(src) for d in iter_file(src, path)]


def test_every_format_gives_the_same_documents(tmp_path):
    import datasets

    texts = [r["text"] for r in RECORDS]
    (tmp_path / "j").mkdir()
    write_jsonl(tmp_path / "j" / "a.jsonl", RECORDS[:40])
    write_jsonl(tmp_path / "j" / "b.jsonl.gz", RECORDS[40:80])
    write_jsonl(tmp_path / "j" / "c.jsonl.zst", RECORDS[80:], frames=3)
    write_parquet(tmp_path / "p.parquet", RECORDS, row_group_size=16)
    datasets.Dataset.from_list(RECORDS).save_to_disk(str(tmp_path / "saved"), num_shards=2)
    datasets.DatasetDict({"train": datasets.Dataset.from_list(RECORDS)}).save_to_disk(str(tmp_path / "saved_dict"))
    sources = {
        "jsonl folder": _src("jsonl", [tmp_path / "j"]),
        "jsonl globs": _src("jsonl", [tmp_path / "j" / "*.jsonl", tmp_path / "**" / "*.jsonl.*"]),
        "parquet": _src("parquet", [tmp_path / "*.parquet"]),
        "save_to_disk": _src("hf_dataset", [tmp_path / "saved"]),
        "save_to_disk dict": _src("hf_dataset", [tmp_path / "saved_dict"]),
        "datasets json builder": _src("hf_dataset", [tmp_path / "j" / "*.jsonl*"], hf_builder="json"),
        "datasets parquet builder": _src("hf_dataset", [tmp_path / "p.parquet"], hf_builder="parquet"),
    }
    assert len(input_files(sources["save_to_disk"])) == 2  # one input per Arrow file
    for what, src in sources.items():
        docs = _docs(src)
        assert [d.text for d in docs] == texts, what
        assert [d.id for d in docs] == [r["id"] for r in RECORDS], what
        assert all(d.meta == {"source": "wikipedia"} for d in docs), what
        assert "".join(read_documents(src)) == "".join(texts), what
    jl = _docs(sources["jsonl folder"])
    assert [d.line for d in jl[:3]] == [1, 2, 3]  # JSON lines count lines from 1
    # a configurable text field and metadata fields
    renamed = [{"content": r["text"], "doc": r["id"], "lang": "en"} for r in RECORDS[:5]]
    write_jsonl(tmp_path / "renamed.jsonl", renamed)
    src = _src("jsonl", [tmp_path / "renamed.jsonl"], text_field="content", id_field="doc", metadata_fields=["lang"])
    docs = _docs(src)
    assert [d.text for d in docs] == texts[:5] and docs[0].id == RECORDS[0]["id"] and docs[0].meta == {"lang": "en"}
    # text files: each file one document (plain and compressed)
    (tmp_path / "txt").mkdir()
    (tmp_path / "txt" / "a.txt").write_text(texts[0])
    with gzip.open(tmp_path / "txt" / "b.txt.gz", "wt") as f:
        f.write(texts[1])
    assert [d.text for d in _docs(_src("text_files", [tmp_path / "txt"]))] == texts[:2]


def test_reading_streams_in_bounded_memory(tmp_path):
    big = RECORDS * 500  # ~29 MB of text
    path = write_jsonl(tmp_path / "big.jsonl.zst", big, frames=4)
    src = _src("jsonl", [path])
    tracemalloc.start()
    n = sum(len(d.text) for d in iter_file(src, path))
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert n == sum(len(r["text"]) for r in big) and n > 25e6
    assert peak < 8e6, f"reading a {n / 1e6:.0f} MB shard peaked at {peak / 1e6:.1f} MB"


def _is_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _bad_inputs(tmp_path) -> dict[str, tuple[CorpusConfig, str, str]]:
    """name -> (source, the bad file, what its error must say)."""
    good = write_jsonl(tmp_path / "good.jsonl", RECORDS[:10])
    binary = tmp_path / "binary.jsonl"
    # fixed bytes (os.urandom starting with b"\n" made the error say "line 2"): the first line is not blank and
    # not UTF-8, so it is line 1 that fails to parse
    noise = random.Random(0).randbytes(2000)
    first = noise.split(b"\n", 1)[0]
    assert first.strip() and not _is_utf8(first)
    binary.write_bytes(noise)
    parquet_as_jsonl = tmp_path / "table.jsonl"
    write_parquet(parquet_as_jsonl, RECORDS[:10])
    no_text = write_jsonl(tmp_path / "no_text.jsonl", RECORDS[:2] + [{"id": "x", "body": "text elsewhere"}])
    empty = tmp_path / "empty.jsonl"
    empty.write_bytes(b"")
    trunc_gz = write_jsonl(tmp_path / "trunc.jsonl.gz", RECORDS[:60])
    with open(trunc_gz, "r+b") as f:
        f.truncate(os.path.getsize(trunc_gz) // 2)
    trunc_zst = write_jsonl(tmp_path / "trunc.jsonl.zst", RECORDS[:60])
    with open(trunc_zst, "r+b") as f:
        f.truncate(os.path.getsize(trunc_zst) // 2)
    gz_plain_name = tmp_path / "packed.jsonl"
    gz_plain_name.write_bytes(gzip.compress(open(good, "rb").read()))
    not_parquet = tmp_path / "fake.parquet"
    not_parquet.write_bytes(open(good, "rb").read())
    empty_parquet = write_parquet(tmp_path / "empty.parquet", RECORDS[:1])
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(RECORDS[:1]).slice(0, 0), empty_parquet)
    return {
        "binary data named .jsonl": (_src("jsonl", [good, binary]), str(binary), "line 1 is not a JSON object"),
        "parquet named .jsonl": (_src("jsonl", [parquet_as_jsonl]), str(parquet_as_jsonl), "line 1"),
        "missing text field": (_src("jsonl", [good, no_text]), str(no_text), "line 3 has no field 'text'"),
        "empty shard": (_src("jsonl", [good, empty]), str(empty), "empty shard"),
        "truncated .gz": (_src("jsonl", [trunc_gz]), str(trunc_gz), "truncated"),
        "truncated .zst": (_src("jsonl", [trunc_zst]), str(trunc_zst), "truncated"),
        "gzip under a .jsonl name": (_src("jsonl", [gz_plain_name]), str(gz_plain_name), "rename it"),
        "not parquet": (_src("parquet", [not_parquet]), str(not_parquet), "not a readable Parquet file"),
        "empty parquet": (_src("parquet", [empty_parquet]), str(empty_parquet), "empty shard"),
        "missing column": (_src("parquet", [write_parquet(tmp_path / "cols.parquet", RECORDS[:3])], text_field="body"),
                           str(tmp_path / "cols.parquet"), "without column 'body'"),
    }


def test_bad_inputs_name_the_file_and_leave_no_complete_looking_shard(tmp_path, bpe):
    tok, tok_dir = bpe
    cache = tmp_path / "cache"
    for what, (src, path, says) in _bad_inputs(tmp_path).items():
        with pytest.raises(ValueError, match=re.escape(path) + ".*" + re.escape(says)):
            tokenize_inputs(src, source_inputs(src), tok, tok_dir, str(cache), TokenizeConfig(threads=1),
                            progress=False)
        shards = os.listdir(cache / "tokens") if (cache / "tokens").exists() else []
        complete = [s for s in shards if os.path.isfile(cache / "tokens" / s / "meta.json")]
        assert not [s for s in shards if s.startswith(".tmp")], what  # nothing half-written is left
        # only the good file before the bad one may have its (complete) shard
        assert len(complete) <= 1, (what, complete)
    with pytest.raises(FileNotFoundError, match="matches no file"):
        input_files(_src("jsonl", [tmp_path / "nothing" / "*.jsonl"]))
    with pytest.raises(ValueError, match="not a JSON-lines file by its name"):
        input_files(_src("jsonl", [write_parquet(tmp_path / "x.parquet", RECORDS[:2])]))
    with pytest.raises(ValueError, match="corpus.source=jsonl"):
        input_files(_src("text_files", [tmp_path / "good.jsonl"]))


def test_cli_reports_a_bad_shard_in_one_line(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(b'{"text": "fine"}\n\x00\x01\x02 not json\n')
    r = run_cli("proxy-train", "corpus=jsonl", f"corpus.paths=[{bad}]", f"paths.root={tmp_path / 'root'}",
                "tokenizer.vocab_size=300", "tokenizer.sample_bytes_per_corpus=10000", "pretrain.max_tokens=1024",
                ok=False, timeout=300)
    assert r.returncode == 2, r.stdout[-2000:] + r.stderr[-2000:]
    errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and str(bad) in errors[0] and "line 2" in errors[0], r.stderr[-2000:]
    assert "Traceback" not in r.stderr
    assert not subprocess.run(["find", str(tmp_path / "root" / "cache"), "-name", "meta.json", "-path", "*tokens*"],
                              capture_output=True, text=True).stdout.strip()
