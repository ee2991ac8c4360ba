"""write_kv_cache_: the kernel against the reference, bit for bit, for every dtype pairing."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pyllm.ops import kv_cache as K

DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def make(T, hkv, d, num_blocks, block_size, src_dtype, cache_dtype, n_padding, seed, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    k = (torch.randn(T, hkv, d, generator=g) * 3).to(src_dtype)
    v = (torch.randn(T, hkv, d, generator=g) * 3).to(src_dtype)
    k_cache = torch.full((num_blocks, block_size, hkv, d), float("nan"), dtype=cache_dtype)
    v_cache = torch.full_like(k_cache, float("nan"))
    slots = torch.randperm(num_blocks * block_size, generator=g)[:T]
    pad = torch.randperm(T, generator=g)[:n_padding]
    slots[pad] = -torch.randint(1, 100, (len(pad),), generator=g)
    args = [k, v, k_cache, v_cache, slots]
    return [a.to(device) for a in args]


@st.composite
def cases(draw):
    block_size = draw(st.sampled_from([1, 4, 16, 32]))
    num_blocks = draw(st.integers(1, 40))
    T = draw(st.integers(0, min(num_blocks * block_size, 300)))
    return dict(T=T, hkv=draw(st.sampled_from([1, 2, 3, 8])), d=draw(st.sampled_from([4, 17, 64, 128])),
                num_blocks=num_blocks, block_size=block_size, src_dtype=draw(st.sampled_from(DTYPES)),
                cache_dtype=draw(st.sampled_from(DTYPES)), n_padding=draw(st.integers(0, T)),
                seed=draw(st.integers(0, 2**31 - 1)))


def assert_same(a: torch.Tensor, b: torch.Tensor) -> None:
    torch.testing.assert_close(a, b, rtol=0, atol=0, equal_nan=True)


@settings(max_examples=60, deadline=None)
@given(cases())
def test_matches_reference(params):
    k, v, k_cache, v_cache, slots = make(**params)
    k_ref, v_ref = k_cache.clone(), v_cache.clone()
    K.write_kv_cache_ref_(k, v, k_ref, v_ref, slots)
    K.write_kv_cache_(k, v, k_cache, v_cache, slots)
    assert_same(k_cache, k_ref)
    assert_same(v_cache, v_ref)


def test_negative_slots_skipped_and_rest_untouched():
    k, v, k_cache, v_cache, slots = make(10, 2, 8, 4, 4, torch.float32, torch.float32, 0, 1)
    slots[:] = -1
    slots[3] = 5
    K.write_kv_cache_(k, v, k_cache, v_cache, slots)
    flat = k_cache.view(-1, 2, 8)
    assert torch.equal(flat[5], k[3])
    assert flat[torch.arange(16) != 5].isnan().all()


def test_validated_path_matches_op():
    k, v, k_cache, v_cache, slots = make(50, 3, 64, 8, 16, torch.float32, torch.bfloat16, 5, 2)
    a, b = k_cache.clone(), v_cache.clone()
    K.check_write_kv_cache(k, v, a, b, slots)
    K.write_kv_cache_(k, v, a, b, slots, validated=True)
    K.write_kv_cache_(k, v, k_cache, v_cache, slots)
    assert_same(a, k_cache)
    assert_same(b, v_cache)
    # The hot path skips the value checks, not the cheap structural ones.
    with pytest.raises(ValueError):
        K.write_kv_cache_(k, v, a, b, slots.int(), validated=True)
    with pytest.raises(ValueError):
        K.write_kv_cache_(k[:, :1], v[:, :1], a, b, slots, validated=True)


def test_opcheck():
    for src, cache in ((torch.float32, torch.float32), (torch.float32, torch.float16), (torch.bfloat16, torch.float32)):
        args = make(12, 2, 8, 4, 4, src, cache, 2, 3)
        torch.library.opcheck(torch.ops.pyllm.write_kv_cache_.default, args)


def _bad_inputs():
    def mutate(index, fn):
        def build():
            args = make(6, 2, 8, 4, 4, torch.float32, torch.float32, 1, 4)
            args[index] = fn(args)
            return args
        return build

    return [
        ("slot_mapping", mutate(4, lambda a: torch.tensor([0, 1, 2, 3, 4, 16]))),  # pool holds 16
        ("slot_mapping", mutate(4, lambda a: a[4].int())),
        ("slot_mapping", mutate(4, lambda a: a[4][:-1])),
        ("k", mutate(0, lambda a: a[0].int())),
        ("k", mutate(0, lambda a: a[0][:, :1])),
        ("v", mutate(1, lambda a: a[1][:-1])),
        ("v", mutate(1, lambda a: a[1].half())),
        ("k_cache", mutate(2, lambda a: a[2][..., :4])),
        ("v_cache", mutate(3, lambda a: a[3].half())),
        ("v_cache", mutate(3, lambda a: a[3][:2])),
        ("k_cache", mutate(2, lambda a: a[2].transpose(0, 1).contiguous().transpose(0, 1))),
        ("k_cache", mutate(2, lambda a: a[2][0])),
        ("device", mutate(4, lambda a: a[4].to("meta"))),
    ]


@pytest.mark.parametrize("name,build", _bad_inputs(), ids=[f"{i}-{n}" for i, (n, _) in enumerate(_bad_inputs())])
def test_bad_input_raises_value_error(name, build):
    args = build()
    with pytest.raises(ValueError, match=name):
        K.write_kv_cache_(*args)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
@settings(max_examples=40, deadline=None)
@given(cases())
def test_cuda_matches_reference(params):
    from pyllm import _C

    if not getattr(_C, "has_cuda", False):
        pytest.skip("pyllm was built without CUDA kernels")
    k, v, k_cache, v_cache, slots = make(**params)
    K.write_kv_cache_ref_(k, v, k_cache, v_cache, slots)
    args = make(**params, device="cuda")
    K.write_kv_cache_(*args)
    assert_same(args[2].cpu(), k_cache)
    assert_same(args[3].cpu(), v_cache)


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=[pytest.mark.cuda, pytest.mark.skipif(
    not torch.cuda.is_available(), reason="no CUDA device")])])
@pytest.mark.parametrize("hkv,d", [(3, 64), (1, 17), (2, 4)])
def test_token_rows_may_be_views_of_a_wider_tensor(device, hkv, d):
    """k and v as the model passes them: column slices of the fused QKV projection's output
    (each token row contiguous, rows a QKV row apart), written without a copy on CUDA."""
    g = torch.Generator().manual_seed(hkv * d)
    T, q_width = 37, 5 * d
    qkv = torch.randn(T, q_width + 2 * hkv * d, generator=g).to(device)
    k = qkv[:, q_width:q_width + hkv * d].view(T, hkv, d)
    v = qkv[:, q_width + hkv * d:].view(T, hkv, d)
    assert not v.is_contiguous()
    k_cache = torch.full((12, 4, hkv, d), float("nan"), device=device)
    v_cache = torch.full_like(k_cache, float("nan"))
    slots = torch.randperm(48, generator=g)[:T].to(device)
    slots[3] = -1
    k_ref, v_ref = k_cache.clone(), v_cache.clone()
    K.write_kv_cache_ref_(k, v, k_ref, v_ref, slots)
    K.write_kv_cache_(k, v, k_cache, v_cache, slots)
    assert_same(k_cache.cpu(), k_ref.cpu())
    assert_same(v_cache.cpu(), v_ref.cpu())
    K.write_kv_cache_(k, v, k_cache, v_cache, slots, validated=True)  # the model's trusted path
    assert_same(v_cache.cpu(), v_ref.cpu())


@pytest.mark.parametrize("cache_dtype", [torch.float16, torch.bfloat16])
def test_float_to_half_rounding_on_every_isa(cache_dtype):
    """float32 into a half cache (vector paths on AVX2 / AVX-512): the same bits as torch's
    .to() on ties, denormals, overflow, infinities and signed zeros; NaN (any payload) stays NaN.
    Rows of 37 elements end in a scalar / masked tail."""
    from pyllm import _C

    g = torch.Generator().manual_seed(0)
    specials = [0.0, -0.0, float("inf"), -float("inf"), 65504.0, 65520.0, 65519.99, 1e-8, 5.96e-8, 2.98e-8,
                6.1e-5, 1e-40, -1e-45, 3.0e38, 3.4e38]
    bits = torch.randint(-2**31, 2**31 - 1, (4096,), generator=g, dtype=torch.int64).to(torch.int32)
    # Ties in both formats: a kept part (odd or even) plus exactly half of the dropped part.
    ties = torch.randint(0, 2**15, (512,), generator=g, dtype=torch.int32)
    nans = torch.tensor([0x7FC00000, 0x7F800001, 0xFF800001 - 2**32, 0x7FFFFFFF, 0x7F810000], dtype=torch.int32)
    values = torch.cat([torch.tensor(specials), bits.view(torch.float32), ((ties << 16) | 0x8000).view(torch.float32),
                        ((ties << 13) | 0x1000).view(torch.float32), nans.view(torch.float32),
                        torch.randn(1000, generator=g) * 1e-6])
    n = values.numel() // 37 * 37
    k = values[:n].reshape(-1, 1, 37)
    expected = k.to(cache_dtype)
    before = _C.cpu_isa()
    try:
        for isa in ("baseline", "avx2", "avx512"):
            _C.set_cpu_isa(isa)
            k_cache = torch.zeros(k.shape[0], 1, 1, 37, dtype=cache_dtype)
            v_cache = torch.zeros_like(k_cache)
            K.write_kv_cache_(k, k, k_cache, v_cache, torch.arange(k.shape[0]))
            got = k_cache.reshape(expected.shape)
            nan = expected.isnan()
            assert torch.equal(got.isnan(), nan), _C.cpu_isa()
            assert torch.equal(got[~nan].view(torch.int16), expected[~nan].view(torch.int16)), _C.cpu_isa()
            assert torch.equal(v_cache.view(torch.int16), k_cache.view(torch.int16))
    finally:
        _C.set_cpu_isa(before)
