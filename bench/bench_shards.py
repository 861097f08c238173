"""Shards end to end: the LFW chips as WebDataset tar shards and as a Parquet file, purified by `puface purify`.

    python bench/bench_shards.py [--data lfw-chips150] [--n 0] [--per-shard 1000]

Builds, from the chips (every one, or --n of them): WebDataset shards `lfw-%06d.tar` (records
`<identity>/<stem>` with `.jpg`, `.cls` = the identity, `.json` = {"index": i}) and one Parquet file in
the Hugging Face `datasets` layout (`image` = {bytes, path}, `label`, `key`); one record of each is made
corrupt (a truncated JPEG). Then runs `puface purify` on each (the CLI, in this process), checks that the
output holds the same keys in the same order minus the corrupt one, labels and other fields unchanged,
and every image byte-identical to the folder job's output for the same chip, and times each against the
folder job (same chips, same process). Writes bench/results/shards.{md,csv}.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import shutil
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from benchtables import Table, shown, write_tables
from puface.cli import main as cli
from puface.data.datasets import resolve_data_root
from puface.io.shards import read_records


def _purify(args: list[str]) -> tuple[int, str, float]:
    out, err = io.StringIO(), io.StringIO()
    t = time.perf_counter()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli(["purify", "--no-progress", *args])
    return code, out.getvalue() + err.getvalue(), time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="lfw-chips150")
    ap.add_argument("--n", type=int, default=0, help="chips to use (0: all)")
    ap.add_argument("--per-shard", type=int, default=1000)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    root = resolve_data_root(args.data)
    files = sorted(root.glob("*/*.jpg"))
    if args.n:
        files = files[:: max(1, len(files) // args.n)][: args.n]
    tmp = Path(tempfile.mkdtemp(prefix="bench-shards-"))
    bad_at = len(files) // 2
    bad_key = "corrupt/record"
    keys = [f"{f.parent.name}/{f.stem}" for f in files]

    # the folder job (reference bytes and baseline time)
    folder_in = tmp / "folder-in"
    for f in files:
        (folder_in / f.parent.name).mkdir(parents=True, exist_ok=True)
        (folder_in / f.parent.name / f.name).symlink_to(f.resolve())
    code, text, t_folder = _purify([str(folder_in), str(tmp / "folder-out")])
    assert code == 0, text
    ref = {k: (tmp / "folder-out" / f"{k}.jpg").read_bytes() for k in keys}

    # WebDataset shards
    wds_in = tmp / "wds"
    wds_in.mkdir()
    recs = [(k, {"jpg": f.read_bytes(), "cls": f.parent.name.encode(), "json": json.dumps({"index": i}).encode()})
            for i, (k, f) in enumerate(zip(keys, files))]
    recs.insert(bad_at, (bad_key, {"jpg": files[0].read_bytes()[:400], "cls": b"nobody", "json": b"{}"}))
    n_shards = 0
    for s in range(0, len(recs), args.per_shard):
        with tarfile.open(wds_in / f"lfw-{n_shards:06d}.tar", "w") as tf:
            for k, fields in recs[s : s + args.per_shard]:
                for ext, data in fields.items():
                    ti = tarfile.TarInfo(f"{k}.{ext}")
                    ti.size = len(data)
                    tf.addfile(ti, io.BytesIO(data))
        n_shards += 1
    code, text_wds, t_wds = _purify([str(wds_in), str(tmp / "wds-out")])
    out_recs = [r for p in sorted((tmp / "wds-out").glob("*.tar")) for r in read_records(p)]
    in_recs = [r for p in sorted(wds_in.glob("*.tar")) for r in read_records(p)]
    wds_ok = (code == 1 and f"{bad_key}" in text_wds
              and [r.key for r in out_recs] == [r.key for r in in_recs if r.key != bad_key] == keys
              and all(o.fields["cls"] == i.fields["cls"] and o.fields["json"] == i.fields["json"]
                      for o, i in zip(out_recs, [r for r in in_recs if r.key != bad_key]))
              and all(r.fields["jpg"] == ref[r.key] for r in out_recs))

    # Parquet, Hugging Face datasets layout
    pq_in = tmp / "parquet"
    pq_in.mkdir()
    blobs = [f.read_bytes() for f in files]
    labels = [f.parent.name for f in files]
    pkeys = list(keys)
    blobs.insert(bad_at, files[0].read_bytes()[:400])
    labels.insert(bad_at, "nobody")
    pkeys.insert(bad_at, bad_key)
    img = pa.array([{"bytes": b, "path": f"{k}.jpg"} for k, b in zip(pkeys, blobs)],
                   type=pa.struct([("bytes", pa.binary()), ("path", pa.string())]))
    table = pa.table({"key": pkeys, "image": img, "label": labels}).replace_schema_metadata(
        {b"huggingface": json.dumps({"info": {"features": {"key": {"dtype": "string", "_type": "Value"},
                                                             "image": {"_type": "Image"},
                                                             "label": {"dtype": "string", "_type": "Value"}}}}).encode()})
    pq.write_table(table, pq_in / "train-00000-of-00001.parquet", row_group_size=1000)
    code, text_pq, t_pq = _purify([str(pq_in), str(tmp / "pq-out")])
    res = pq.read_table(tmp / "pq-out" / "train-00000-of-00001.parquet")
    pq_ok = (code == 1 and bad_key in text_pq and res.schema == table.schema
             and res.column("key").to_pylist() == keys and res.column("label").to_pylist() == [f.parent.name for f in files]
             and all(v["bytes"] == ref[k] and v["path"] == f"{k}.jpg" for k, v in zip(keys, res.column("image").to_pylist())))

    n = len(files)
    rows = [
        {"format": "image folder (baseline)", "inputs": f"{n} files", "records_out": n, "seconds": t_folder,
         "img_s": n / t_folder, "ratio": 1.0, "checks": "reference"},
        {"format": "WebDataset tar", "inputs": f"{n_shards} shards, {n + 1} records (1 corrupt)", "records_out": len(out_recs),
         "seconds": t_wds, "img_s": n / t_wds, "ratio": t_folder / t_wds, "checks": "all pass" if wds_ok else "FAILED"},
        {"format": "Parquet (HF datasets Image)", "inputs": f"1 file, {n + 1} rows (1 corrupt)", "records_out": res.num_rows,
         "seconds": t_pq, "img_s": n / t_pq, "ratio": t_folder / t_pq, "checks": "all pass" if pq_ok else "FAILED"},
    ]
    shutil.rmtree(tmp, ignore_errors=True)
    notes = (f"{n} chips of {shown(root)}. Checks: exit code 1 with the corrupt record named; the output holds every "
             "other record, same keys in the same order; labels (.cls, label), .json and the image path unchanged; "
             "every image byte-identical to the folder job's output for the same chip; the Parquet schema and its "
             "Hugging Face metadata unchanged. ratio: throughput / the folder job's.")
    table_md = Table("`puface purify` on shards vs an image folder", rows, [
        ("format", "input", "{}"), ("inputs", "records", "{}"), ("records_out", "records written", "{}"),
        ("seconds", "seconds", "{:.1f}"), ("img_s", "images/s", "{:.1f}"), ("ratio", "ratio", "{:.2f}x"),
        ("checks", "checks", "{}")], notes=notes)
    write_tables("shards", "Shards end to end", [table_md], args.out or Path(__file__).resolve().parent / "results",
                 baseline=f"the folder job on the same chips: {n / t_folder:.1f} images/s")
    if not (wds_ok and pq_ok):
        print("a check FAILED", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
