//! Which LoRA adapter sits in which of the model's adapter slots (`--max-loras` of them),
//! as the scheduler sees it: plain data, no weights. The runner copies an adapter's weights
//! into a slot when a step's [`super::SchedulerOutput::lora_loads`] says so.
//!
//! Policy: an adapter stays resident until its slot is needed; a slot is taken, in this
//! order, from the adapter itself (already resident), an empty slot, or the least recently
//! used resident adapter that no running sequence uses. When every slot holds an adapter a
//! running sequence uses, a sequence on another adapter waits (the scheduler admits later
//! sequences that fit meanwhile); it never fails for that reason.

/// One adapter's id, unique per registration (re-registering a name gives a new id).
pub type LoraId = u64;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Resident {
    lora: LoraId,
    /// Step counter of its last use.
    last_used: u64,
}

/// The slot table.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LoraSlots {
    slots: Vec<Option<Resident>>,
    clock: u64,
}

impl LoraSlots {
    /// `num_slots` empty slots (0: LoRA disabled).
    pub fn new(num_slots: usize) -> Self {
        Self {
            slots: vec![None; num_slots],
            clock: 0,
        }
    }

    /// Number of slots.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// Whether there are no slots (LoRA disabled).
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// Advances the use clock (once per step).
    pub fn tick(&mut self) {
        self.clock += 1;
    }

    /// The slot holding `lora`, if resident; marks it used.
    pub fn lookup(&mut self, lora: LoraId) -> Option<u32> {
        let clock = self.clock;
        let (i, r) = (self.slots.iter_mut().enumerate())
            .find_map(|(i, s)| s.as_mut().filter(|r| r.lora == lora).map(|r| (i, r)))?;
        r.last_used = clock;
        Some(i as u32)
    }

    /// Where `lora` would go, without changing anything: `Some((slot, true))` when it
    /// must be loaded there (an empty slot, or the least recently used one whose adapter
    /// `in_use` says no running sequence uses), `Some((slot, false))` when it is already
    /// resident there, `None` when every slot is busy. [`LoraSlots::commit`] takes it.
    pub fn plan(&self, lora: LoraId, in_use: impl Fn(LoraId) -> bool) -> Option<(u32, bool)> {
        if let Some(i) = (self.slots.iter()).position(|s| s.is_some_and(|r| r.lora == lora)) {
            return Some((i as u32, false));
        }
        let free = self.slots.iter().position(Option::is_none);
        let slot = free.or_else(|| {
            (self.slots.iter().enumerate())
                .filter_map(|(i, s)| s.map(|r| (i, r)))
                .filter(|(_, r)| !in_use(r.lora))
                .min_by_key(|(_, r)| r.last_used)
                .map(|(i, _)| i)
        })?;
        Some((slot as u32, true))
    }

    /// Puts `lora` in `slot` (as [`LoraSlots::plan`] chose), marked used now.
    pub fn commit(&mut self, slot: u32, lora: LoraId) {
        if let Some(s) = self.slots.get_mut(slot as usize) {
            *s = Some(Resident {
                lora,
                last_used: self.clock,
            });
        }
    }

    /// The adapters resident, by slot.
    pub fn resident(&self) -> impl Iterator<Item = (u32, LoraId)> + '_ {
        (self.slots.iter().enumerate()).filter_map(|(i, s)| s.map(|r| (i as u32, r.lora)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn acquire(
        s: &mut LoraSlots,
        l: LoraId,
        in_use: impl Fn(LoraId) -> bool,
    ) -> Option<(u32, bool)> {
        let planned = s.plan(l, in_use)?;
        s.commit(planned.0, l);
        Some(planned)
    }

    #[test]
    fn fills_empty_slots_then_evicts_the_least_recently_used_idle_one() {
        let mut s = LoraSlots::new(2);
        assert_eq!(acquire(&mut s, 10, |_| false), Some((0, true)));
        s.tick();
        assert_eq!(acquire(&mut s, 11, |_| false), Some((1, true)));
        s.tick();
        assert_eq!(acquire(&mut s, 10, |_| false), Some((0, false))); // 10 used now, 11 older
        s.tick();
        assert_eq!(acquire(&mut s, 12, |_| false), Some((1, true))); // evicts 11
        assert_eq!(s.resident().collect::<Vec<_>>(), vec![(0, 10), (1, 12)]);
    }

    #[test]
    fn never_evicts_an_adapter_in_use() {
        let mut s = LoraSlots::new(2);
        acquire(&mut s, 1, |_| false);
        acquire(&mut s, 2, |_| false);
        assert_eq!(acquire(&mut s, 3, |_| true), None);
        assert_eq!(acquire(&mut s, 3, |l| l == 1), Some((1, true)));
        assert_eq!(acquire(&mut LoraSlots::new(0), 1, |_| false), None);
    }
}
