"""Shard formats: `puface purify` on WebDataset tar shards and Parquet files (raw bytes and the Hugging Face
`datasets` Image struct) writes same-format shards with the same keys, order and fields, byte-identical
images to the folder job's, reports and drops a corrupt record, and resumes per shard."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pytest

pytest.importorskip("webdataset")
pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")

from puface.cli import main  # noqa: E402
from puface.io.shards import find_shards, is_shard_input, plan_shards, read_records  # noqa: E402
from puface.utils.errors import PufaceError  # noqa: E402

N = 12  # johns chips used (every 4th of the 55)
BAD_KEY = "corrupt-0007"


class R:
    def __init__(self, code, output):
        self.exit_code, self.output = code, output


def _purify(args, capfd=None):
    """`puface purify ARGS` in-process: (exit code, stdout + stderr)."""
    import contextlib

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["purify", *args])
    return R(code, out.getvalue() + err.getvalue())


@pytest.fixture(scope="module")
def chips(johns_dir):
    files = sorted(johns_dir.glob("*/*.jpg"))[::4][:N]
    return [(f"{f.parent.name}-{f.stem}", f.parent.name, f.read_bytes(), f) for f in files]


@pytest.fixture(scope="module")
def folder_out(chips, tmp_path_factory):
    """The folder job's outputs for the same chips (the reference every shard output must equal)."""
    src = tmp_path_factory.mktemp("folder-in")
    for key, _label, data, _ in chips:
        (src / f"{key}.jpg").write_bytes(data)
    out = tmp_path_factory.mktemp("folder-out") / "out"
    r = _purify([str(src), str(out), "--no-progress", "--device", "cpu"])
    assert r.exit_code == 0, r.output
    return {p.stem: p.read_bytes() for p in out.glob("*.jpg")}


def _write_tar(path: Path, records: list[tuple[str, dict[str, bytes]]]) -> None:
    with tarfile.open(path, "w") as tf:
        for key, fields in records:
            for ext, data in fields.items():
                ti = tarfile.TarInfo(f"{key}.{ext}")
                ti.size = len(data)
                tf.addfile(ti, io.BytesIO(data))


def _wds_records(chips, corrupt_at: int | None = None):
    recs = []
    for i, (key, label, data, _) in enumerate(chips):
        fields = {"cls": label.encode(), "jpg": data, "json": json.dumps({"i": i}).encode()}
        recs.append((key, fields))
        if corrupt_at is not None and i == corrupt_at:
            recs.append((BAD_KEY, {"cls": b"nobody", "jpg": data[: len(data) // 3]}))  # truncated JPEG
    return recs


def test_webdataset_roundtrip_keys_labels_order_and_corrupt_record(chips, folder_out, tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    half = len(chips) // 2
    _write_tar(src / "shard-000000.tar", _wds_records(chips[:half], corrupt_at=2))
    _write_tar(src / "shard-000001.tar", _wds_records(chips[half:]))
    out = tmp_path / "out"
    r = _purify([str(src), str(out), "--no-progress", "--device", "cpu", "--batch-size", "4"])
    assert r.exit_code == 1, r.output  # one record failed
    assert f"{BAD_KEY}" in r.output and "truncated" in r.output.lower()
    assert sorted(p.name for p in out.glob("*.tar")) == ["shard-000000.tar", "shard-000001.tar"]
    for name in ("shard-000000.tar", "shard-000001.tar"):
        before = [rec for rec in read_records(src / name) if rec.key != BAD_KEY]
        after = list(read_records(out / name))
        assert [a.key for a in after] == [b.key for b in before]  # same keys, same order
        for a, b in zip(after, before):
            assert a.fields["cls"] == b.fields["cls"] and a.fields["json"] == b.fields["json"]
            assert a.fields["jpg"] != b.fields["jpg"]  # purified
            assert a.fields["jpg"] == folder_out[a.key]  # byte-identical to the folder job
    # resume: both shards exist -> nothing is redone
    mtimes = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    r2 = _purify([str(src), str(out), "--no-progress", "--device", "cpu"])
    assert r2.exit_code == 0, r2.output
    assert "2 already done" in r2.output
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == mtimes
    assert not list(out.glob(".*"))  # no temporary files left


def test_resume_redoes_only_the_missing_shard(chips, tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    for k in range(3):
        _write_tar(src / f"s-{k}.tar", _wds_records(chips[k * 2 : k * 2 + 2]))
    out = tmp_path / "out"
    assert _purify([str(src), str(out), "--no-progress"]).exit_code == 0
    kept = (out / "s-0.tar").stat().st_mtime_ns
    (out / "s-1.tar").unlink()
    r = _purify([f"{src}/s-{{0..2}}.tar", str(out), "--no-progress"])
    assert r.exit_code == 0, r.output
    assert "1 purified, 2 already done" in r.output
    assert (out / "s-0.tar").stat().st_mtime_ns == kept
    assert [x.key for x in read_records(out / "s-1.tar")] == [x.key for x in read_records(src / "s-1.tar")]
    # OUT records its settings: finished shards of another setting are not kept as 'already done'
    r = _purify([str(src), str(out), "--no-progress", "--template", "arcface112"])
    assert r.exit_code == 2 and "different purifying setting (differs in: template)" in r.output
    assert json.loads((out / "purify_config.json").read_text())["template"] == "auto"


def test_a_broken_shard_is_counted_apart_from_the_records(chips, tmp_path):
    """One shard with a corrupt record, one truncated tar: the summary adds up (records of the written shards;
    the broken shard, left out whole, counted and listed as a failed shard, its records not counted)."""
    src = tmp_path / "in"
    src.mkdir()
    _write_tar(src / "train-000000.tar", _wds_records(chips[:2], corrupt_at=0))
    _write_tar(src / "whole.tar", _wds_records(chips[2:6]))
    with tarfile.open(src / "whole.tar") as tf:
        last = tf.getmembers()[-1]
    data = (src / "whole.tar").read_bytes()
    (src / "train-000001.tar").write_bytes(data[: last.offset_data + last.size // 2])  # cut inside the last file
    (src / "whole.tar").unlink()
    out = tmp_path / "out"
    r = _purify(
        [f"{src}/train-{{000000..000001}}.tar", str(out), "--no-progress", "--device", "cpu", "--batch-size", "2"]
    )
    assert r.exit_code == 1, r.output
    assert "2 shards: 1 purified, 0 already done (skipped), 1 failed;" in r.output
    assert "3 images: 2 purified, 0 already done (skipped), 0 copied unchanged, 0 skipped, 1 failed" in r.output
    assert "FAILED (1):" in r.output and BAD_KEY in r.output
    assert "FAILED shards, left out whole (1):" in r.output and "train-000001.tar: cannot read" in r.output
    assert sorted(p.name for p in out.glob("*.tar")) == ["train-000000.tar"]


@pytest.mark.parametrize("layout", ["hf-image", "bytes"])
def test_parquet_roundtrip(chips, folder_out, tmp_path, layout):
    keys = [c[0] for c in chips] + [BAD_KEY]
    labels = [c[1] for c in chips] + ["nobody"]
    blobs = [c[2] for c in chips] + [chips[0][2][:500]]
    if layout == "hf-image":
        img = pa.array([{"bytes": b, "path": f"{k}.jpg"} for k, b in zip(keys, blobs)],
                       type=pa.struct([("bytes", pa.binary()), ("path", pa.string())]))
        schema_md = {b"huggingface": b'{"info": {"features": {"image": {"_type": "Image"}}}}'}
    else:
        img = pa.array(blobs, type=pa.binary())
        schema_md = None
    table = pa.table({"id": keys, "image": img, "label": labels})
    if schema_md:
        table = table.replace_schema_metadata(schema_md)
    src = tmp_path / "train-00000-of-00001.parquet"
    pq.write_table(table, src, row_group_size=5)
    out = tmp_path / "out"
    r = _purify([str(src), str(out), "--no-progress", "--batch-size", "4"])
    assert r.exit_code == 1 and BAD_KEY in r.output, r.output
    res = pq.read_table(out / src.name)
    assert res.schema == table.schema and res.schema.metadata == table.schema.metadata
    assert res.column("id").to_pylist() == keys[:-1] and res.column("label").to_pylist() == labels[:-1]
    for k, v in zip(keys, res.column("image").to_pylist()):
        data = v["bytes"] if layout == "hf-image" else v
        assert data == folder_out[k]
        if layout == "hf-image":
            assert v["path"] == f"{k}.jpg"


def test_shard_specs_and_refusals(chips, tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    _write_tar(src / "a.tar", _wds_records(chips[:1]))
    assert is_shard_input(src) and is_shard_input(src / "a.tar") and is_shard_input(f"{src}/*.tar")
    assert not is_shard_input(chips[0][3].parent)  # an image folder
    (src / "x.jpg").write_bytes(chips[0][2])
    with pytest.raises(PufaceError, match="both image files and"):
        is_shard_input(src)
    assert [p.name for p in find_shards(f"{src}/*.tar")[0]] == ["a.tar"]
    with pytest.raises(PufaceError, match="no .tar or .parquet shard matches"):
        find_shards(f"{src}/*.parquet")
    with pytest.raises(PufaceError, match="inside the input folder"):
        (src / "x.jpg").unlink()
        plan_shards(src, src / "out")


def test_a_tar_made_on_macos_keeps_its_records_whole(chips, tmp_path):
    """macOS's tar puts an AppleDouble `._NAME` member before each file with extended attributes; they are junk,
    not records, and must not split a record (its label would be lost from the image's record)."""
    src = tmp_path / "mac.tar"
    with tarfile.open(src, "w") as tf:
        for key, label, data, _ in chips[:2]:
            for ext, payload in (("jpg", data), ("cls", label.encode())):
                for name, body in (
                    (f"shard/._{key}.{ext}", b"\x00\x05\x16\x07AppleDouble"),
                    (f"shard/{key}.{ext}", payload),
                ):
                    ti = tarfile.TarInfo(name)
                    ti.size = len(body)
                    tf.addfile(ti, io.BytesIO(body))
        ti = tarfile.TarInfo("__MACOSX/shard/._x.jpg")
        ti.size = 4
        tf.addfile(ti, io.BytesIO(b"junk"))
    recs = list(read_records(src))
    assert [(r.key, sorted(r.fields), r.image_field) for r in recs] == [
        (f"shard/{key}", ["cls", "jpg"], "jpg") for key, _, _, _ in chips[:2]]
    assert [r.fields["cls"] for r in recs] == [label.encode() for _, label, _, _ in chips[:2]]


def test_every_image_of_a_webdataset_record_is_purified(chips, folder_out, tmp_path):
    """A record of several images (a pair: KEY.left.jpg, KEY.right.jpg) gets each one purified, byte-identical to the
    folder job (the earlier code purified the first and passed the others on as they were, exit 0); a record with one
    bad image is left out whole, its good image listed as left out with it; --image-field names the ones to purify."""
    (a, _, da, _), (b, _, db, _), (c, _, dc, _) = chips[:3]
    recs = [("p0", {"cls": b"0", "left.jpg": da, "right.jpg": db}),
            ("p1", {"cls": b"1", "left.jpg": dc, "right.jpg": dc[: len(dc) // 3]})]  # a truncated right image
    src = tmp_path / "pairs.tar"
    _write_tar(src, recs)
    out = tmp_path / "out"
    r = _purify([str(src), str(out), "--no-progress", "--device", "cpu"])
    assert r.exit_code == 1, r.output
    assert "4 images: 2 purified, 0 already done (skipped), 0 copied unchanged, 1 skipped, 1 failed" in r.output
    assert "p1.right.jpg: truncated" in r.output
    assert "p1.left.jpg: left out with its record" in r.output and "p1.right.jpg failed" in r.output
    assert "1 records (1 of several images, each image purified: left.jpg, right.jpg)" in r.output
    (got,) = read_records(out / src.name)
    assert got.key == "p0" and got.fields["cls"] == b"0"
    assert got.fields["left.jpg"] == folder_out[a] and got.fields["right.jpg"] == folder_out[b]
    # only the field named is purified; the other image is kept as it was
    out2 = tmp_path / "out2"
    r = _purify([str(src), str(out2), "--no-progress", "--device", "cpu", "--image-field", "left.jpg"])
    assert r.exit_code == 0, r.output
    p0, p1 = read_records(out2 / src.name)
    assert p0.fields["left.jpg"] == folder_out[a] and p0.fields["right.jpg"] == db
    assert p1.fields["left.jpg"] == folder_out[c] and p1.fields["right.jpg"] == dc[: len(dc) // 3]


def test_a_resume_over_shards_an_earlier_version_left_half_purified_is_refused(chips, tmp_path):
    """An output folder written before every image of a record was purified (its settings record has no
    shard_version) resumed its shards of several-image records as done, their other images still cloaked (exit 0).
    Now such shards are named and the resume refused; once they are deleted a resume redoes them only, and the
    record says this version. Shards of one image per record, and folders where --image-field named the field, stay
    done."""
    (_, _, da, _), (_, _, db, _), (_, _, dc, _) = chips[:3]
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    _write_tar(src / "single.tar", [("s0", {"cls": b"0", "jpg": dc})])
    args = [str(src), str(out), "--no-progress", "--device", "cpu"]
    assert _purify(args).exit_code == 0
    # the earlier version's outputs of a pair record and a file of two image columns: the same records, the right
    # image (column) as it was (the first one purified: not looked at)
    _write_tar(src / "pairs.tar", [("p0", {"cls": b"0", "left.jpg": da, "right.jpg": db})])
    struct = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    col = pa.array([{"bytes": da, "path": "a.jpg"}], type=struct)
    pq.write_table(pa.table({"id": ["k"], "left": col, "right": col}), src / "cols.parquet")
    for name in ("pairs.tar", "cols.parquet"):
        (out / name).write_bytes((src / name).read_bytes())
    record = out / "purify_config.json"

    def as_earlier(image_field=None):  # the record an earlier version wrote
        rec = json.loads(record.read_text())
        rec.pop("shard_version", None)
        record.write_text(json.dumps({**rec, "image_field": image_field}))

    as_earlier("jpg")
    r = _purify([*args, "--image-field", "jpg"])  # the field was named: the earlier version did the same
    assert r.exit_code == 0 and "3 already done" in r.output, r.output
    as_earlier()
    r = _purify(args)
    assert r.exit_code == 2, r.output
    assert "2 output shard(s) written by an earlier puface" in r.output
    assert "pairs.tar (record p0 holds several images)" in r.output
    assert "cols.parquet (image columns left, right)" in r.output and "single.tar" not in r.output
    assert "shard_version" not in record.read_text()  # nothing written: a resume is refused again
    for p in (out / "pairs.tar", out / "cols.parquet", src / "cols.parquet"):
        p.unlink()
    r = _purify(args)
    assert r.exit_code == 0 and "2 shards: 1 purified, 1 already done" in r.output, r.output
    (p0,) = read_records(out / "pairs.tar")
    assert db != p0.fields["right.jpg"] and json.loads(record.read_text())["shard_version"] >= 2


def test_a_parquet_file_of_several_image_columns_is_refused_until_one_is_named(chips, tmp_path):
    struct = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    col = pa.array([{"bytes": chips[0][2], "path": "a.jpg"}], type=struct)
    src = tmp_path / "pairs.parquet"
    pq.write_table(pa.table({"id": ["k"], "left": col, "right": col}), src)
    r = _purify([str(src), str(tmp_path / "out"), "--no-progress"])
    assert r.exit_code == 2 and "several image columns (left, right)" in r.output and "--image-field left" in r.output
    r = _purify([str(src), str(tmp_path / "out2"), "--no-progress", "--image-field", "right"])
    assert r.exit_code == 0, r.output
    res = pq.read_table(tmp_path / "out2" / src.name)
    assert res.column("left").to_pylist()[0]["bytes"] == chips[0][2] != res.column("right").to_pylist()[0]["bytes"]


def test_a_tar_member_that_is_a_link_or_a_device_fails_its_record_by_name(chips, tmp_path):
    """webdataset's tar reader drops every member that is not a regular file without a word: a record whose image was
    a hard link (GNU tar stores a second copy of a file so) or a device vanished from the output, listed nowhere, and
    one whose image was a symbolic link read as "no image field". Each is now listed as failed, naming the member and
    what it is; the links are never followed, the other records written."""
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    (_, _, good, _), (_, _, other, _) = chips[0], chips[1]

    def add(tf, name, data=None, kind=tarfile.REGTYPE, link=""):
        ti = tarfile.TarInfo(name)
        ti.type, ti.linkname = kind, link
        ti.size = len(data) if data is not None else 0
        tf.addfile(ti, io.BytesIO(data) if data is not None else None)

    with tarfile.open(src / "s.tar", "w") as tf:
        add(tf, "a.jpg", good)
        add(tf, "a.cls", b"1")
        add(tf, "b.jpg", kind=tarfile.SYMTYPE, link="/etc/passwd")
        add(tf, "b.cls", b"2")
        add(tf, "c.jpg", kind=tarfile.LNKTYPE, link="a.jpg")
        add(tf, "d.jpg", kind=tarfile.CHRTYPE)
        add(tf, "e.jpg", other)
        add(tf, "e.cls", kind=tarfile.SYMTYPE, link="../../secret")
        add(tf, "f.jpg", other)
    r = _purify([str(src / "s.tar"), str(out), "--no-progress", "--device", "cpu"])
    assert r.exit_code == 1, r.output
    for key, what in (("b", "b.jpg is a symbolic link to /etc/passwd"), ("c", "c.jpg is a hard link to a.jpg"),
                      ("d", "d.jpg is a device file"), ("e", "e.cls is a symbolic link to ../../secret")):
        assert f"s.tar:{key}: member {what}, not a file" in r.output, r.output
    assert "6 images: 2 purified" in r.output and "4 failed" in r.output, r.output
    assert [x.key for x in read_records(out / "s.tar")] == ["a", "f"]
    with tarfile.open(out / "s.tar") as tf:
        assert all(m.isreg() for m in tf.getmembers())
