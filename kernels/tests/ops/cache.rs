//! `reshape_and_cache`: keys and values land exactly at their slots in their own halves of
//! the cache, -1 is skipped, other slots keep their contents, and a rejected call writes
//! nothing.

use crate::support::{device_tests, rand_tensor, rng};
use candle_core::{DType, Device, Result, Tensor};
use rand::seq::SliceRandom;
use wick_kernels::{reshape_and_cache, SlotMapping};

const SENTINEL: f32 = 7.0;

/// `[2, num_blocks, block_size, kv_heads, head_dim]` filled with [`SENTINEL`].
fn cache(dims: [usize; 4], dtype: DType, dev: &Device) -> Result<Tensor> {
    let [nb, bs, h, d] = dims;
    Tensor::full(SENTINEL, (2, nb, bs, h, d), dev)?.to_dtype(dtype)
}

fn host(t: &Tensor) -> Result<Vec<f32>> {
    t.to_dtype(DType::F32)?.flatten_all()?.to_vec1()
}

/// Asserts that half `half` of `cache` holds row t of `rows[half]` at `slots[t]` for every
/// written token and `SENTINEL` in every other slot (`written` lists earlier writes, as
/// `(kv, slots)`, that must survive).
fn assert_slots(cache: &Tensor, half: usize, written: &[(&Tensor, &[i64])]) -> Result<()> {
    let (_, nb, bs, h, d) = cache.dims5()?;
    let row = h * d;
    let mut want = vec![SENTINEL; nb * bs * row];
    for (kv, slots) in written {
        let rows = host(&kv.get(half)?)?;
        for (t, &slot) in slots.iter().enumerate() {
            if slot >= 0 {
                let at = slot as usize * row;
                want[at..at + row].copy_from_slice(&rows[t * row..(t + 1) * row]);
            }
        }
    }
    assert_eq!(host(&cache.get(half)?)?, want, "half {half}");
    Ok(())
}

fn assert_both(cache: &Tensor, written: &[(&Tensor, &[i64])]) -> Result<()> {
    assert_slots(cache, 0, written)?;
    assert_slots(cache, 1, written)
}

fn writes_rows_at_slots_and_skips_padding(dev: &Device) -> Result<()> {
    let mut rng = rng(200);
    for dtype in [DType::F32, DType::F16, DType::BF16] {
        // head_dim 6: rows that are not a multiple of any vector width.
        let kc = cache([5, 4, 2, 6], dtype, dev)?;
        let mut free: Vec<i64> = (0..20).collect();
        free.shuffle(&mut rng);
        let mut slots: Vec<i64> = free.drain(..7).collect();
        slots.insert(2, -1);
        slots.push(-1);
        let n = slots.len();
        let kv = rand_tensor(&mut rng, &[2, n, 2, 6], dtype, dev)?;
        reshape_and_cache(&kv, &kc, &SlotMapping::new(slots.clone(), dev)?)?;
        assert_both(&kc, &[(&kv, &slots)])?;

        // A decode step: two more tokens; earlier rows stay.
        let more: Vec<i64> = free.drain(..2).collect();
        let kv2 = rand_tensor(&mut rng, &[2, 2, 2, 6], dtype, dev)?;
        reshape_and_cache(&kv2, &kc, &SlotMapping::new(more.clone(), dev)?)?;
        assert_both(&kc, &[(&kv, &slots), (&kv2, &more)])?;
    }
    Ok(())
}

fn non_contiguous_rows_are_accepted(dev: &Device) -> Result<()> {
    let mut rng = rng(201);
    let kc = cache([2, 4, 3, 8], DType::F32, dev)?;
    // [2, heads, tokens, d] viewed as [2, tokens, heads, d].
    let kv = rand_tensor(&mut rng, &[2, 3, 5, 8], DType::F32, dev)?.transpose(1, 2)?;
    let slots = vec![7i64, 0, -1, 3, 4];
    reshape_and_cache(&kv, &kc, &SlotMapping::new(slots.clone(), dev)?)?;
    assert_both(&kc, &[(&kv.contiguous()?, &slots)])
}

fn keys_and_values_land_in_their_halves(dev: &Device) -> Result<()> {
    // Keys all ones and values all twos: any mix-up of the halves shows.
    let kc = cache([3, 4, 2, 8], DType::BF16, dev)?;
    let keys = Tensor::ones((3, 2, 8), DType::BF16, dev)?;
    let kv = Tensor::stack(&[keys.clone(), (keys * 2.0)?], 0)?;
    let slots = vec![11i64, 0, 5];
    reshape_and_cache(&kv, &kc, &SlotMapping::new(slots.clone(), dev)?)?;
    assert_both(&kc, &[(&kv, &slots)])?;
    let values = host(&kc.get(1)?)?;
    assert_eq!(values.iter().filter(|&&v| v == 2.0).count(), 3 * 16);
    assert!(!values.contains(&1.0));
    Ok(())
}

fn rejected_call_writes_nothing(dev: &Device) -> Result<()> {
    let mut rng = rng(203);
    let kc = cache([2, 4, 1, 8], DType::BF16, dev)?;
    let kv = rand_tensor(&mut rng, &[2, 3, 1, 8], DType::BF16, dev)?;
    for bad in [[0i64, 1, 8], [3, 4, 3]] {
        let slots = SlotMapping::new(bad.to_vec(), dev)?;
        assert!(reshape_and_cache(&kv, &kc, &slots).is_err(), "{bad:?}");
        assert_both(&kc, &[])?;
    }
    // A slot below -1 cannot even be laid out for the device.
    assert!(SlotMapping::new(vec![0, -2, 1], dev).is_err());
    Ok(())
}

fn empty_step_is_a_no_op(dev: &Device) -> Result<()> {
    let kc = cache([2, 4, 1, 8], DType::F32, dev)?;
    let kv = Tensor::zeros((2, 0, 1, 8), DType::F32, dev)?;
    reshape_and_cache(&kv, &kc, &SlotMapping::new(vec![], dev)?)?;
    assert_both(&kc, &[])
}

device_tests!(
    writes_rows_at_slots_and_skips_padding,
    non_contiguous_rows_are_accepted,
    keys_and_values_land_in_their_halves,
    rejected_call_writes_nothing,
    empty_step_is_a_no_op,
);
