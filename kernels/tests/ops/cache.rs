//! `reshape_and_cache`: rows land exactly at their slots, -1 is skipped, other slots keep
//! their contents, caches may be views into one allocation, and a rejected call writes
//! nothing.

use crate::support::{device_tests, rand_tensor, rng};
use candle_core::{DType, Device, Result, Tensor};
use rand::seq::SliceRandom;
use wick_kernels::{reshape_and_cache, SlotMapping};

const SENTINEL: f32 = 7.0;

/// `[num_blocks, block_size, kv_heads, head_dim]` filled with [`SENTINEL`].
fn cache(dims: [usize; 4], dtype: DType, dev: &Device) -> Result<Tensor> {
    Tensor::full(SENTINEL, &dims[..], dev)?.to_dtype(dtype)
}

fn host(t: &Tensor) -> Result<Vec<f32>> {
    t.to_dtype(DType::F32)?.flatten_all()?.to_vec1()
}

/// Asserts that `cache` holds row t of `rows` at `slots[t]` for every written token and
/// `SENTINEL` in every other slot (`written` lists earlier writes that must survive).
fn assert_slots(cache: &Tensor, written: &[(Vec<f32>, Vec<i64>)]) -> Result<()> {
    let (nb, bs, h, d) = cache.dims4()?;
    let row = h * d;
    let mut want = vec![SENTINEL; nb * bs * row];
    for (rows, slots) in written {
        for (t, &slot) in slots.iter().enumerate() {
            if slot >= 0 {
                let at = slot as usize * row;
                want[at..at + row].copy_from_slice(&rows[t * row..(t + 1) * row]);
            }
        }
    }
    assert_eq!(host(cache)?, want);
    Ok(())
}

fn writes_rows_at_slots_and_skips_padding(dev: &Device) -> Result<()> {
    let mut rng = rng(200);
    for dtype in [DType::F32, DType::F16, DType::BF16] {
        // head_dim 6: rows that are not a multiple of any vector width.
        let dims = [5, 4, 2, 6];
        let (kc, vc) = (cache(dims, dtype, dev)?, cache(dims, dtype, dev)?);
        let mut free: Vec<i64> = (0..20).collect();
        free.shuffle(&mut rng);
        let mut slots: Vec<i64> = free.drain(..7).collect();
        slots.insert(2, -1);
        slots.push(-1);
        let n = slots.len();
        let k = rand_tensor(&mut rng, &[n, 2, 6], dtype, dev)?;
        let v = rand_tensor(&mut rng, &[n, 2, 6], dtype, dev)?;
        let slot_t = SlotMapping::new(slots.clone(), dev)?;
        reshape_and_cache(&k, &v, &kc, &vc, &slot_t)?;
        assert_slots(&kc, &[(host(&k)?, slots.clone())])?;
        assert_slots(&vc, &[(host(&v)?, slots.clone())])?;

        // A decode step: two more tokens; earlier rows stay.
        let more: Vec<i64> = free.drain(..2).collect();
        let k2 = rand_tensor(&mut rng, &[2, 2, 6], dtype, dev)?;
        let v2 = rand_tensor(&mut rng, &[2, 2, 6], dtype, dev)?;
        reshape_and_cache(&k2, &v2, &kc, &vc, &SlotMapping::new(more.clone(), dev)?)?;
        assert_slots(
            &kc,
            &[(host(&k)?, slots.clone()), (host(&k2)?, more.clone())],
        )?;
        assert_slots(&vc, &[(host(&v)?, slots), (host(&v2)?, more)])?;
    }
    Ok(())
}

fn non_contiguous_rows_are_accepted(dev: &Device) -> Result<()> {
    let mut rng = rng(201);
    let dims = [2, 4, 3, 8];
    let (kc, vc) = (cache(dims, DType::F32, dev)?, cache(dims, DType::F32, dev)?);
    // [heads, tokens, d] viewed as [tokens, heads, d].
    let k = rand_tensor(&mut rng, &[3, 5, 8], DType::F32, dev)?.transpose(0, 1)?;
    let v = rand_tensor(&mut rng, &[3, 5, 8], DType::F32, dev)?.transpose(0, 1)?;
    let slots = vec![7i64, 0, -1, 3, 4];
    reshape_and_cache(&k, &v, &kc, &vc, &SlotMapping::new(slots.clone(), dev)?)?;
    assert_slots(&kc, &[(host(&k.contiguous()?)?, slots.clone())])?;
    assert_slots(&vc, &[(host(&v.contiguous()?)?, slots)])
}

fn caches_as_views_of_one_allocation(dev: &Device) -> Result<()> {
    let mut rng = rng(202);
    let both = Tensor::full(SENTINEL, (2, 3, 4, 2, 8), dev)?;
    let (kc, vc) = (both.get(0)?, both.get(1)?);
    let k = rand_tensor(&mut rng, &[3, 2, 8], DType::F32, dev)?;
    let v = rand_tensor(&mut rng, &[3, 2, 8], DType::F32, dev)?;
    let slots = vec![11i64, 0, 5];
    reshape_and_cache(&k, &v, &kc, &vc, &SlotMapping::new(slots.clone(), dev)?)?;
    // Read through the parent: the writes went into its two halves.
    assert_slots(&both.get(0)?, &[(host(&k)?, slots.clone())])?;
    assert_slots(&both.get(1)?, &[(host(&v)?, slots)])
}

fn rejected_call_writes_nothing(dev: &Device) -> Result<()> {
    let mut rng = rng(203);
    let dims = [2, 4, 1, 8];
    let (kc, vc) = (
        cache(dims, DType::BF16, dev)?,
        cache(dims, DType::BF16, dev)?,
    );
    let k = rand_tensor(&mut rng, &[3, 1, 8], DType::BF16, dev)?;
    let v = rand_tensor(&mut rng, &[3, 1, 8], DType::BF16, dev)?;
    for bad in [[0i64, 1, 8], [0, -2, 1], [3, 4, 3]] {
        let slots = SlotMapping::new(bad.to_vec(), dev)?;
        assert!(
            reshape_and_cache(&k, &v, &kc, &vc, &slots).is_err(),
            "{bad:?}"
        );
        assert_slots(&kc, &[])?;
        assert_slots(&vc, &[])?;
    }
    Ok(())
}

fn empty_step_is_a_no_op(dev: &Device) -> Result<()> {
    let dims = [2, 4, 1, 8];
    let (kc, vc) = (cache(dims, DType::F32, dev)?, cache(dims, DType::F32, dev)?);
    let k = Tensor::zeros((0, 1, 8), DType::F32, dev)?;
    let slots = SlotMapping::new(vec![], dev)?;
    reshape_and_cache(&k, &k, &kc, &vc, &slots)?;
    assert_slots(&kc, &[])
}

device_tests!(
    writes_rows_at_slots_and_skips_padding,
    non_contiguous_rows_are_accepted,
    caches_as_views_of_one_allocation,
    rejected_call_writes_nothing,
    empty_step_is_a_no_op,
);
