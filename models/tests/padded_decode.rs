//! Decode steps laid out in a fixed [`GraphShape`] (padded with dummy sequences, block
//! tables of a fixed width, a fixed number of attention partitions: what a CUDA graph
//! replays) compute exactly what the same steps laid out as they are compute: SmolLM2's
//! golden cases still match with every decode step padded, a padded step's rows are
//! bit-identical to the unpadded step's, and the dummy sequences write nothing to the
//! cache.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use candle_core::{DType, Tensor};
use common::*;
use std::collections::HashMap;
use std::sync::Mutex;
use wick_models::{GraphShape, InputBuffer, KvCache, ModelInput, SequenceChunk};

const EOS: u32 = 2;
const LOGPROB_TOL: f64 = 2e-3;

#[test]
fn golden_cases_with_every_decode_step_padded() {
    let loaded = load_smollm2(DType::F32);
    let model = &loaded.model;
    let cases = golden_cases();
    let bs = 16;
    let mut cache = KvCache::new(model.config(), bs, 512, DType::F32, model.device()).unwrap();
    let mut blocks = BlockCounter(0);
    let mut seqs: Vec<Seq> = cases
        .iter()
        .map(|c| {
            let n = (c.prompt_token_ids.len() + c.max_tokens).div_ceil(bs);
            Seq::new(&c.prompt_token_ids, c.max_tokens, blocks.take(n))
        })
        .collect();
    // One buffer per shape, as the engine's runner keeps them.
    let buffers: Mutex<HashMap<GraphShape, InputBuffer>> = Mutex::default();
    let padded_steps = Mutex::new(Vec::new());
    let build = |chunks: &[SequenceChunk], bs: usize| match GraphShape::for_decode(chunks, bs) {
        Some(shape) => {
            let mut buffers = buffers.lock().unwrap();
            let buffer = buffers.entry(shape).or_default();
            let input = ModelInput::build_padded(buffer, chunks, bs, model.device(), shape)?;
            assert_eq!(
                (input.num_seqs, input.graph_shape),
                (shape.seqs, Some(shape))
            );
            // Every step of a shape in the one allocation of its buffer.
            assert_eq!(buffer.allocations(), 1);
            padded_steps.lock().unwrap().push((chunks.len(), shape));
            Ok(input)
        }
        None => ModelInput::build(chunks, bs, model.device()),
    };
    run_batch_laid_out(model, &mut cache, &mut seqs, 7, EOS, build);
    for (c, s) in cases.iter().zip(&seqs) {
        assert_matches_golden(c, &s.out, LOGPROB_TOL);
    }
    // Decode steps of 8 sequences down to 1 as the cases finish: padded to 8, 4, 2, 1.
    let steps = padded_steps.into_inner().unwrap();
    let sizes: std::collections::BTreeSet<usize> = steps.iter().map(|s| s.1.seqs).collect();
    assert!(
        steps.iter().any(|&(real, shape)| real < shape.seqs),
        "{steps:?}"
    );
    assert!(sizes.contains(&8) && sizes.contains(&1), "{sizes:?}");
    for (real, shape) in steps {
        assert!(real <= shape.seqs && shape.partitions == 1 && shape.table_width == 16);
    }
}

fn cache_values(cache: &KvCache) -> Vec<Vec<f32>> {
    (cache.layers.iter())
        .map(|t| t.flatten_all().unwrap().to_vec1::<f32>().unwrap())
        .collect()
}

#[test]
fn a_padded_step_is_the_unpadded_step_bit_for_bit_and_dummies_write_nothing() {
    let loaded = load_smollm2(DType::F32);
    let model = &loaded.model;
    let cases = golden_cases();
    let bs = 16;
    let mut cache = KvCache::new(model.config(), bs, 128, DType::F32, model.device()).unwrap();
    // Three prompts prefilled, then one decode token each (block 0 is left unused by them,
    // so that the dummy sequences' reads of block 0 touch nothing real).
    let mut blocks = BlockCounter(1);
    let prompts: Vec<&[u32]> = cases[..3].iter().map(|c| &c.prompt_token_ids[..]).collect();
    let tables: Vec<Vec<u32>> = (prompts.iter())
        .map(|p| blocks.take((p.len() + 1).div_ceil(bs)))
        .collect();
    let chunk = |i: usize, tokens: &'static [u32], computed: usize| SequenceChunk {
        tokens,
        num_computed_tokens: computed,
        block_table: &tables[i],
        lora_slot: None,
        sample: true,
    };
    let prefill: Vec<SequenceChunk> = (0..3)
        .map(|i| SequenceChunk {
            tokens: prompts[i],
            ..chunk(i, &[], 0)
        })
        .collect();
    let input = ModelInput::build(&prefill, bs, model.device()).unwrap();
    model.forward(&input, &mut cache).unwrap();
    let decode: Vec<SequenceChunk> = (0..3).map(|i| chunk(i, &[42], prompts[i].len())).collect();

    let input = ModelInput::build(&decode, bs, model.device()).unwrap();
    assert_eq!(input.graph_shape, None);
    let want: Tensor = model.forward(&input, &mut cache).unwrap();
    let cache_after = cache_values(&cache);

    let shape = GraphShape::for_decode(&decode, bs).unwrap();
    assert_eq!(
        shape,
        GraphShape {
            seqs: 4,
            partitions: 1,
            table_width: 16,
            lora: false,
        }
    );
    let buffer = InputBuffer::new();
    for wider in [
        shape,
        GraphShape {
            seqs: 8,
            partitions: 4,
            table_width: 64,
            lora: false,
        },
    ] {
        let input = ModelInput::build_padded(&buffer, &decode, bs, model.device(), wider).unwrap();
        let got = model.forward(&input, &mut cache).unwrap();
        assert_eq!(got.dims(), [wider.seqs, want.dim(1).unwrap()]);
        let got = got.narrow(0, 0, 3).unwrap();
        assert_eq!(
            got.to_vec2::<f32>().unwrap(),
            want.to_vec2::<f32>().unwrap(),
            "{wider:?}"
        );
        // The same K/V rewritten to the same slots, nothing else.
        assert!(cache_values(&cache) == cache_after, "{wider:?}");
    }

    // Steps a shape cannot hold are refused.
    let prefill_shape = GraphShape::for_decode(&prefill, bs);
    assert_eq!(prefill_shape, None);
    let small = GraphShape { seqs: 2, ..shape };
    let err = ModelInput::build_padded(&buffer, &decode, bs, model.device(), small).unwrap_err();
    assert!(err.to_string().contains("padded decode shape"), "{err}");
}
