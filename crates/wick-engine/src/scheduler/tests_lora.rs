//! The scheduler with LoRA adapters: slots assigned at admission and loaded once, kept
//! while in use, evicted least recently used when idle; a sequence whose adapter finds no
//! slot waits without holding up others; adapters key the prefix cache.

use super::tests::{config, prompt, sid, step};
use super::*;

fn lora_scheduler(max_loras: usize) -> Scheduler {
    let mut c = config(256, 4, 256);
    c.max_loras = max_loras;
    Scheduler::new(c).unwrap()
}

fn add(s: &mut Scheduler, r: u64, lora: Option<LoraId>, max_tokens: usize) {
    let seq = Sequence::new(sid(r, 0), prompt(0, 8), max_tokens).with_lora(lora);
    s.add_request(seq).unwrap();
}

fn slots(out: &SchedulerOutput) -> Vec<(u64, Option<u32>)> {
    (out.scheduled.iter())
        .map(|x| (x.seq.request.0, x.lora_slot))
        .collect()
}

#[test]
fn adapters_get_slots_once_and_mix_with_the_base_model() {
    let mut s = lora_scheduler(2);
    add(&mut s, 1, Some(10), 3);
    add(&mut s, 2, None, 3);
    add(&mut s, 3, Some(11), 3);
    add(&mut s, 4, Some(10), 3);
    let (out, _) = step(&mut s);
    assert_eq!(
        slots(&out),
        vec![(1, Some(0)), (2, None), (3, Some(1)), (4, Some(0))]
    );
    assert_eq!(out.lora_loads, vec![(0, 10), (1, 11)]);
    let (out, _) = step(&mut s);
    assert!(
        out.lora_loads.is_empty(),
        "resident adapters are not loaded again"
    );
    assert_eq!(slots(&out)[0], (1, Some(0)));
}

#[test]
fn a_busy_adapter_set_makes_others_wait_without_blocking_the_queue() {
    let mut s = lora_scheduler(1);
    add(&mut s, 1, Some(10), 4);
    add(&mut s, 2, Some(11), 2);
    add(&mut s, 3, None, 2);
    let (out, _) = step(&mut s);
    // 11 finds the only slot busy with 10: it waits; the base-model request behind it runs.
    assert_eq!(slots(&out), vec![(1, Some(0)), (3, None)]);
    assert_eq!(s.num_waiting(), 1);
    while s.get(sid(1, 0)).is_some() {
        let (out, _) = step(&mut s);
        assert!(out.scheduled.iter().all(|x| x.seq.request.0 != 2));
    }
    // 10 is done: its slot is idle and 11 evicts it.
    let (out, _) = step(&mut s);
    assert_eq!(slots(&out), vec![(2, Some(0))]);
    assert_eq!(out.lora_loads, vec![(0, 11)]);
}

#[test]
fn eviction_takes_the_least_recently_used_idle_adapter() {
    let mut s = lora_scheduler(2);
    for (r, lora) in [(1, 10), (2, 11)] {
        add(&mut s, r, Some(lora), 1);
        step(&mut s);
    }
    add(&mut s, 3, Some(11), 1); // 11 used again: 10 is now the least recently used
    step(&mut s);
    add(&mut s, 4, Some(12), 1);
    let (out, _) = step(&mut s);
    assert_eq!(out.lora_loads, vec![(0, 12)]);
}

#[test]
fn refused_when_lora_is_disabled_and_prefix_cache_is_keyed_by_adapter() {
    let mut s = lora_scheduler(0);
    let seq = Sequence::new(sid(1, 0), prompt(0, 8), 2).with_lora(Some(1));
    assert_eq!(
        s.add_request(seq).unwrap_err().kind,
        ErrorKind::InvalidRequest
    );
    let mut s = lora_scheduler(2);
    add(&mut s, 1, Some(10), 1);
    step(&mut s);
    for (r, lora, cached) in [(2, Some(10), 4), (3, Some(11), 0), (4, None, 0)] {
        add(&mut s, r, lora, 1);
        let (out, _) = step(&mut s);
        assert_eq!(out.scheduled[0].num_computed_tokens, cached, "request {r}");
    }
}
