"""Hostile or careless input to the Python API, image I/O and the NVIDIA pickle reader (issue 17): refused with a
typed error that says what is wrong and what to do, before memory is allocated for it.

Where the unguarded code would allocate gigabytes, the allocation is intercepted instead (Image.new, resize, load,
the backend's run) so the test fails fast, and only the pickle test measures memory, in a subprocess."""
from __future__ import annotations

import io
import math
import pickle
import struct
import subprocess
import sys
import textwrap
import warnings
import zlib

import numpy as np
import pytest
import torch
from PIL import Image
from tr0n_rt.export.models.stylegan2_pkl import load_nvidia_pkl

from tr0n_rt import images as image_io
from tr0n_rt.backends import open_backend
from tr0n_rt.errors import CheckpointError, ConfigError, PromptError, ShapeError
from tr0n_rt.images import clip_pixels, grid, to_pil
from tr0n_rt.interpolate import interpolate, interpolation
from tr0n_rt.sampler import Sampler
from tr0n_rt.settings import SamplingConfig

from .test_stylegan2_pkl import Call, nvidia_code

CFG = SamplingConfig(steps=1, copies=1)


# ---- images in ------------------------------------------------------------------------------------------------


def png(width: int, height: int, bit_depth: int = 1, colour: int = 0, rows: bytes | None = None) -> bytes:
    """A PNG as a hostile user writes one: any header, and IDAT compressing `rows` (default: all-zero rows)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    if rows is None:
        row = b"\0" + b"\0" * math.ceil(width * bit_depth / 8)  # filter byte + packed pixels
        rows = row * height
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, colour, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(rows, 9)) + chunk(b"IEND", b"")


@pytest.fixture
def bounded_pil(monkeypatch):
    """Any resize, decode or new image over 16 Mi pixels fails the test instead of allocating it."""
    limit = 1 << 24
    resize, load, new = Image.Image.resize, Image.Image.load, Image.new

    def guarded_resize(self, size, *a, **k):
        assert size[0] * size[1] <= limit, f"unbounded resize to {size}"
        return resize(self, size, *a, **k)

    def guarded_load(self):
        assert self.size[0] * self.size[1] <= limit, f"decoding {self.size}"
        return load(self)

    def guarded_new(mode, size, *a, **k):
        assert size[0] * size[1] <= limit, f"unbounded Image.new {size}"
        return new(mode, size, *a, **k)

    monkeypatch.setattr(Image.Image, "resize", guarded_resize)
    monkeypatch.setattr(Image.Image, "load", guarded_load)
    monkeypatch.setattr(Image, "new", guarded_new)


def test_a_few_hundred_byte_3000000_x_1_strip_is_refused_before_its_resize(tmp_path, bounded_pil):
    f = tmp_path / "strip.png"
    f.write_bytes(png(3_000_000, 1))
    assert f.stat().st_size < 1000
    with pytest.raises(PromptError, match=r"3,000,000 x 1 pixels, an aspect ratio over 64:1.*crop it"):
        clip_pixels(f, 224)
    with pytest.raises(PromptError, match="aspect ratio"):  # an in-memory image too
        clip_pixels(Image.new("L", (1, 5000)), 224)
    assert clip_pixels(Image.new("L", (640, 10)), 32).shape == (3, 32, 32)  # 64:1 is still read


def test_an_image_over_64_megapixels_is_refused_from_its_header_before_decoding(tmp_path, bounded_pil):
    f = tmp_path / "big.png"
    f.write_bytes(png(9000, 9000))  # 81 megapixels: under Pillow's own bomb limit (89 MP), a 10 KB file
    with pytest.raises(PromptError, match=r"9,000 x 9,000 = 81.0 megapixels, more than 67.1: downscale it"):
        clip_pixels(f, 224)


def wide(mode: str, values: np.ndarray) -> Image.Image:
    if mode == "I;16B":
        return Image.frombytes("I;16B", values.shape[::-1], values.astype(">u2").tobytes())
    return Image.fromarray(values)


@pytest.mark.parametrize("mode,fmt,top", [("I;16", "PNG", 65535), ("I;16B", "TIFF", 65535), ("I", "TIFF", 65535),
                                          ("I", "TIFF", 255), ("F", "TIFF", 1.0)])
def test_16_bit_32_bit_and_float_images_are_scaled_by_their_range_not_clipped(tmp_path, mode, fmt, top):
    rng = np.random.default_rng(0)
    unit = rng.random((37, 50))
    dtype = {"I;16": np.uint16, "I;16B": np.uint16, "I": np.int32, "F": np.float32}[mode]
    values = (unit * top).astype(dtype) if mode != "F" else unit.astype(np.float32)
    f = tmp_path / f"x.{fmt.lower()}"
    wide(mode, values).save(f, format=fmt)
    assert Image.open(f).mode == mode
    eight = Image.fromarray(np.clip(np.rint(values.astype(np.float32) * (255 / top)), 0, 255).astype(np.uint8), "L")
    got = clip_pixels(f, 32)
    np.testing.assert_array_equal(got, clip_pixels(eight, 32))  # as the same picture in 8 bits
    assert 0.3 < got.mean() < 0.7  # neither all white nor all black


@pytest.mark.parametrize("values,match", [
    (np.full((8, 8), -1, np.int32), r"32-bit integer image with values in \[-1, -1\].*8-bit"),
    (np.full((8, 8), 70000, np.int32), r"values in \[70000, 70000\]"),
    (np.full((8, 8), 255.0, np.float32), r"float image with values in \[255, 255\].*scale it to \[0, 1\]"),
    (np.full((8, 8), np.nan, np.float32), r"float image with values in \[nan, nan\]"),
])
def test_wide_images_outside_their_range_are_refused(tmp_path, values, match):
    f = tmp_path / "x.tiff"
    Image.fromarray(values).save(f)
    with pytest.raises(PromptError, match=match):
        clip_pixels(f, 8)


@pytest.mark.parametrize("mode", ["P", "LA", "RGBA", "CMYK", "1"])
def test_palette_alpha_cmyk_and_1_bit_images_are_read_as_open_clip_reads_them_without_a_warning(tmp_path, mode):
    import open_clip

    rng = np.random.default_rng(1)
    f = tmp_path / ("x.tiff" if mode == "CMYK" else "x.png")
    Image.fromarray(rng.integers(0, 256, (41, 30, 4), dtype=np.uint8), "RGBA").convert(mode).save(f)
    img = Image.open(f)
    if mode == "P":  # a PNG palette with alpha: a transparency table in bytes, which Pillow's convert("RGB") warns of
        assert isinstance(img.info.get("transparency"), bytes)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        want = open_clip.image_transform(16, is_train=False, mean=(0, 0, 0), std=(1, 1, 1))(img).numpy()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = clip_pixels(f, 16)
    np.testing.assert_allclose(got, want, atol=1e-6)  # alpha dropped, palette expanded, as open_clip


def test_a_clip_input_size_out_of_range_is_refused(bounded_pil):
    with pytest.raises(ShapeError, match=r"whole number in \[1, 4096\]"):
        clip_pixels(Image.new("RGB", (4, 4)), 10 ** 6)


# ---- images out -----------------------------------------------------------------------------------------------


def test_to_pil_refuses_an_upscale_over_the_output_limit(bounded_pil):
    img = np.zeros((3, 16, 16), np.float32)
    with pytest.raises(ShapeError, match=r"upscaled 100000 x would be 1,600,000 x 1,600,000 pixels.*smaller scale"):
        to_pil(img, 100_000)
    for bad in (0, 2.5, True):
        with pytest.raises(ShapeError, match="scale must be a whole number"):
            to_pil(img, bad)
    with pytest.raises(ShapeError, match=r"\[C, H, W\] with C = 1 or 3"):
        to_pil(np.zeros((4, 4)))
    assert to_pil(img, 8).size == (128, 128)


def test_a_grid_of_many_small_images_stays_within_the_output_limit(bounded_pil):
    n = 5000  # 4 x 4 images, shown 32 x at 128 px, would make a 1024 x 88,750 sheet (91 MP)
    sheet = grid(np.zeros((n, 3, 4, 4), np.float32), ["x"] * n, columns=8)
    assert sheet.width * sheet.height <= image_io.MAX_OUTPUT_PIXELS
    small = grid(np.zeros((2, 3, 4, 4), np.float32), ["a", "b"], columns=2)
    assert small.height == 128 + 14  # the display upscale is kept where it fits


def test_a_grid_too_large_shows_reduced_cells_then_is_refused(monkeypatch):
    monkeypatch.setattr(image_io, "MAX_OUTPUT_PIXELS", 64 * 64 * 4)
    sheet = grid(np.zeros((4, 3, 64, 64), np.float32), ["a"] * 4, columns=2)
    assert sheet.width * sheet.height <= 64 * 64 * 4 and sheet.width < 128
    with pytest.raises(ShapeError, match=r"grid of 400 images of 64 x 64.*even with 8 px cells: give fewer"):
        grid(np.zeros((400, 3, 64, 64), np.float32), ["a"] * 400, columns=2)
    with pytest.raises(ShapeError, match="columns must be a whole number >= 1"):
        grid(np.zeros((1, 3, 4, 4), np.float32), ["a"], columns=0)


# ---- the Python API -------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sampler(tiny_text_pipeline):
    return Sampler(open_backend("torch", tiny_text_pipeline))


@pytest.fixture
def no_work(sampler, monkeypatch):
    """The backend must not be run: refusals come before any work."""
    def run(*a, **k):
        raise AssertionError("the backend ran before the input was checked")

    monkeypatch.setattr(sampler.backend, "run", run)
    return sampler


@pytest.mark.parametrize("bad,match", [(np.nan, "NaN or infinite"), (np.inf, "NaN or infinite"),
                                       (-np.inf, "NaN or infinite"), (1e38, "holds 1e[+]38, larger than 10000"),
                                       (1e39, "holds 1e[+]39, larger than 10000"), (-2e4, "holds 2e[+]04")])
def test_non_finite_or_huge_conditions_are_refused_before_any_work(no_work, bad, match):
    c = np.zeros((2, 16))
    c[1, 3] = bad
    with pytest.raises(PromptError, match=match):
        no_work.generate(embeddings=c, config=CFG)
    with pytest.raises(PromptError, match=match):
        no_work.sample(c, [0, 1], CFG)
    with pytest.raises(PromptError, match="larger than 10000"):
        no_work.sample(np.full((1, 16), np.iinfo(np.int64).min), [0], CFG)


def test_a_normal_condition_still_samples(sampler):
    c = sampler.encode_text(["a circle"]) * 50  # unnormalised, within the bound
    assert np.isfinite(sampler.generate(embeddings=c, config=CFG).images).all()


@pytest.mark.parametrize("bad,error,match", [
    ("abc", PromptError, "embeddings must be numbers.*got text"),
    (["a", "b"], PromptError, "embeddings must be numbers.*got text"),
    (np.array([object(), object()], dtype=object), PromptError, "real numbers.*object"),
    (np.array([["x"] * 16]), PromptError, "real numbers.*<U1"),
    ([[1.0] * 16, [1.0] * 3], ShapeError, "rectangular"),
    (np.zeros((1, 16), np.complex64), PromptError, "real numbers.*complex64"),
])
def test_embeddings_that_are_not_numbers_give_typed_errors(no_work, bad, error, match):
    with pytest.raises(error, match=match):
        no_work.generate(embeddings=bad, config=CFG)
    with pytest.raises(error, match=match):
        no_work.sample(bad, [0], CFG)


def test_a_preset_name_as_config_says_how_to_use_a_preset(no_work):
    with pytest.raises(ConfigError, match=r"preset='fast'.*settings.preset\('fast'\)"):
        no_work.generate(["a circle"], config="fast")
    with pytest.raises(ConfigError, match=r"preset='fast'"):
        no_work.sample(np.zeros((1, 16), np.float32), [0], config="fast")
    with pytest.raises(ConfigError, match="must be a SamplingConfig.*dict"):
        no_work.generate(["a circle"], config={"steps": 2})
    with pytest.raises(ConfigError, match=r"preset='paper'"):
        Sampler(no_work.backend, config="paper")


@pytest.mark.parametrize("seeds", [5, None, "ab", 2.0])
def test_seeds_of_the_wrong_type_are_typed(no_work, seeds):
    with pytest.raises(ConfigError, match="seeds must be"):
        no_work.sample(np.zeros((2, 16), np.float32), seeds, CFG)


def test_sample_counts_and_seeds_are_bounded_before_allocation(no_work):
    with pytest.raises(ConfigError, match=r"samples must be a whole number >= 1 and <= 100,000, got 1000000000000"):
        no_work.generate(["a circle"], samples=10 ** 12)
    with pytest.raises(ConfigError, match=r"1,000 conditions x 1,000 samples = 1,000,000 images.*fewer"):
        no_work.generate(["a circle"] * 1000, samples=1000)
    with pytest.raises(ConfigError, match=r"1,000 conditions x 1,000 samples"):
        no_work.generate(embeddings=np.zeros((1000, 16), np.float32), samples=1000)
    with pytest.raises(ConfigError, match=r"below 2\^64"):
        no_work.generate(["a circle"], seed=2 ** 64 - 2, samples=3)
    with pytest.raises(ConfigError, match="prompts must be a list"):
        no_work.generate(prompts=3.5)


def test_interpolation_points_are_bounded_and_whole(tmp_path):
    c = np.eye(2, 16, dtype=np.float32)
    for n in (10 ** 6, 2.5):
        with pytest.raises(ConfigError, match="--interpolate"):
            interpolation(["a", "b"], c, None, n, "text")
        with pytest.raises(ConfigError, match="--interpolate"):
            interpolate(c[0], c[1], n, "text")
    assert interpolate(c[0], c[1], 3, "text").shape == (3, 16)


# ---- the NVIDIA StyleGAN2 pickle reader -----------------------------------------------------------------------


def storage_record(numel: int = 2, declared: int | None = None) -> bytes:
    """A legacy torch.save of a float storage, as torch.storage._load_from_bytes reads it, declaring `declared`
    elements (default: the true numel) in its persistent id."""
    from torch.serialization import MAGIC_NUMBER, PROTOCOL_VERSION

    class Marker:
        pass

    class Writer(pickle.Pickler):
        def persistent_id(self, obj):
            if isinstance(obj, Marker):
                return "storage", torch.FloatStorage, "0", "cpu", numel if declared is None else declared, None
            return None

    buf = io.BytesIO()
    for x in (MAGIC_NUMBER, PROTOCOL_VERSION, {"protocol_version": PROTOCOL_VERSION, "little_endian": True,
                                               "type_sizes": {"short": 2, "int": 4, "long": 4}}):
        pickle.dump(x, buf, protocol=2)
    Writer(buf, protocol=2).dump(Marker())
    pickle.dump(["0"], buf, protocol=2)
    buf.write(struct.pack("<q", numel) + b"\0" * 4 * numel)
    return buf.getvalue()


def stride0_pickle(path, numel: int):
    """{"G_ema": a 2-float storage viewed with stride 0 as `numel` floats}: a few hundred bytes."""
    storage = Call(torch.storage._load_from_bytes, storage_record())
    path.write_bytes(pickle.dumps({"G_ema": Call(torch._utils._rebuild_tensor_v2, storage, 0, (numel,), (0,),
                                                 False, {})}, protocol=2))
    return path


def test_a_stride_0_tensor_is_refused_before_it_is_allocated(tmp_path):
    path = stride0_pickle(tmp_path / "evil.pkl", 100_000_000)  # 400 MB if rebuilt
    assert path.stat().st_size < 2000
    script = textwrap.dedent(f"""
        import resource, sys
        from tr0n_rt.errors import CheckpointError
        from tr0n_rt.export.models.stylegan2_pkl import load_nvidia_pkl
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        try:
            load_nvidia_pkl({str(path)!r})
        except CheckpointError as e:
            print(e)
        print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024)
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, check=False)
    *message, grown_mb = out.stdout.strip().splitlines()
    assert int(grown_mb) < 100, f"loading grew the process by {grown_mb} MB"
    assert "a tensor of shape [100000000] would need 400,000,000 bytes, more than a pickle of this size" \
        in "\n".join(message)


def test_a_huge_stride_0_tensor_is_named_not_reported_as_a_missing_g_ema(tmp_path):
    path = stride0_pickle(tmp_path / "evil.pkl", 1 << 40)
    with pytest.raises(CheckpointError, match=r"tensor of shape \[1099511627776\] would need 4,398,046,511,104 bytes"):
        load_nvidia_pkl(path)


def test_a_storage_declaring_more_than_it_holds_is_refused_before_torch_allocates_it(tmp_path):
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps({"G_ema": Call(torch.storage._load_from_bytes, storage_record(2, 350_000_000))},
                                  protocol=2))
    with pytest.raises(CheckpointError, match=r"declares 1,400,000,000 bytes of data but holds \d+ bytes.*not a genuine"):
        load_nvidia_pkl(path)


def _tensor_record(t: torch.Tensor):
    """t as NVIDIA's pickles write a tensor: _rebuild_tensor_v2 of a storage record."""
    raw = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.save(t.storage(), raw, _use_new_zipfile_serialization=False)
    storage = Call(torch.storage._load_from_bytes, raw.getvalue())
    return Call(torch._utils._rebuild_tensor_v2, storage, 0, tuple(t.shape), t.stride(), False, {})


@pytest.mark.parametrize("value,what", [({"z_dim": 512}, "a dict"), (_tensor_record(torch.zeros(3)),
                                                                     r"a tensor of shape \[3\]"),
                                        ("Generator", "a str"), (None, "a NoneType")])
def test_a_g_ema_of_the_wrong_type_says_what_it_is(tmp_path, value, what):
    path = tmp_path / "odd.pkl"
    path.write_bytes(pickle.dumps({"G_ema": value, "G": 1}, protocol=2))
    with pytest.raises(CheckpointError, match=rf"'G_ema' is {what}, not a network saved by NVIDIA's "
                                              r"torch_utils.persistence"):
        load_nvidia_pkl(path)
    with pytest.raises(CheckpointError, match=r"with 'D' \(found keys \['G', 'G_ema'\]\)"):
        load_nvidia_pkl(path, network="D")


def test_a_module_shared_at_every_level_is_refused_before_it_is_walked_out(tmp_path):
    """12 children at every level, all the same record, 5 deep: a few hundred bytes, 12^5 = 248,832 paths."""
    with nvidia_code():
        reconstruct = sys.modules["torch_utils.persistence"]._reconstruct_persistent_obj
        node = Call(reconstruct, {"type": "class", "class_name": "Leaf", "state": {}})
        for depth in range(5):
            node = Call(reconstruct, {"type": "class", "class_name": f"L{depth}",
                                      "state": {"_modules": {f"m{i}": node for i in range(12)}}})
        (tmp_path / "wide.pkl").write_bytes(pickle.dumps({"G_ema": node}, protocol=4))
    assert (tmp_path / "wide.pkl").stat().st_size < 2000
    with pytest.raises(CheckpointError, match="more than 10,000 modules"):
        load_nvidia_pkl(tmp_path / "wide.pkl")


def _generator_with(tmp_path, **attributes):
    with nvidia_code():
        reconstruct = sys.modules["torch_utils.persistence"]._reconstruct_persistent_obj
        g = Call(reconstruct, {"type": "class", "class_name": "Generator", "state": dict(attributes)})
        (tmp_path / "g.pkl").write_bytes(pickle.dumps({"G_ema": g}, protocol=4))
    return tmp_path / "g.pkl"


def test_an_attribute_sharing_one_list_at_every_level_is_refused_not_walked_2_to_the_n_times(tmp_path):
    x = [1.0]
    for _ in range(20):  # 2^20 values from 20 memo references
        x = [x, x]
    path = _generator_with(tmp_path, block_kwargs=x)
    assert path.stat().st_size < 1000
    with pytest.raises(CheckpointError, match=r"attribute block_kwargs holds more than 100,000 values"):
        load_nvidia_pkl(path)


def test_an_attribute_nested_thousands_deep_is_a_checkpoint_error_not_a_recursion_error(tmp_path):
    x = []
    for _ in range(3000):
        x = [x]
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(10_000)  # for pickle.dumps here; the loader must not need it
    try:
        path = _generator_with(tmp_path, z_dim=x)
    finally:
        sys.setrecursionlimit(limit)
    with pytest.raises(CheckpointError, match=r"attribute z_dim .*nests deeper than 32"):
        load_nvidia_pkl(path)
