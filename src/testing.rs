//! A scripted stand-in for the ONNX engine, for unit tests of the loops and the cache
//! bookkeeping. The next token after `t` is `script[t]` (logit 10, every other logit 0). The
//! model keeps its own copy of the cached sequence and checks every plan against it, so a loop
//! that re-feeds tokens, misplaces positions or rolls back wrongly fails.

use crate::error::Result;
use crate::kv_cache::StepPlan;
use crate::model::{BatchModel, DecoderModel};
use crate::tokenizer::Decode;

pub struct ScriptedModel {
    pub script: Vec<u32>,
    pub context: usize,
    pub cached: Vec<u32>,
    pub calls: Vec<(usize, usize)>,
    pub reserved: Vec<usize>,
    /// The cached sequence at the start of every pass.
    pub states: Vec<Vec<u32>>,
    /// When set, the logits after token `t` are `table[t]` instead of the one-hot script.
    pub table: Option<Vec<Vec<f32>>>,
    /// When set, `reserve` drops the cache, as an engine that reallocates its buffers does.
    pub reallocate_on_reserve: bool,
    /// When set, the next token depends on the whole cached sequence (a hash of it), not only
    /// on the last token: a loop that feeds a wrong cache then gives other tokens.
    pub whole_history: bool,
    /// The batch cache, one sequence per slot, and the positions each may hold.
    pub slot_caches: Vec<Vec<u32>>,
    pub slot_positions: usize,
    /// Slots per batched pass, one entry per pass.
    pub batch_calls: Vec<usize>,
    logits: Vec<f32>,
}

impl ScriptedModel {
    pub fn new(script: Vec<u32>, context: usize) -> Self {
        ScriptedModel {
            script,
            context,
            cached: Vec::new(),
            calls: Vec::new(),
            reserved: Vec::new(),
            states: Vec::new(),
            table: None,
            reallocate_on_reserve: false,
            whole_history: false,
            slot_caches: Vec::new(),
            slot_positions: 0,
            batch_calls: Vec::new(),
            logits: Vec::new(),
        }
    }

    /// A model with soft logits (for sampling tests): row `t` follows token `t`.
    pub fn with_table(table: Vec<Vec<f32>>, context: usize) -> Self {
        let mut m = ScriptedModel::new(vec![0; table.len()], context);
        m.table = Some(table);
        m
    }

    fn run(&mut self, tokens: &[u32], plan: StepPlan, rows: usize) -> &mut [f32] {
        assert_eq!(plan.past_len, self.cached.len(), "past length out of sync");
        assert_eq!(plan.new_len, tokens.len());
        assert!(plan.total_len() <= self.context);
        self.states.push(self.cached.clone());
        self.cached.extend_from_slice(tokens);
        self.calls.push((plan.past_len, plan.new_len));
        let vocab = self.script.len();
        let mut logits = std::mem::take(&mut self.logits);
        logits.clear();
        logits.resize(rows * vocab, 0.0);
        let first = self.cached.len() - rows;
        for row in 0..rows {
            let seen = &self.cached[..first + row + 1];
            self.fill_row(seen, &mut logits[row * vocab..(row + 1) * vocab]);
        }
        self.logits = logits;
        &mut self.logits
    }

    /// The logits after the sequence `seen` (its last token is the newest).
    fn fill_row(&self, seen: &[u32], out: &mut [f32]) {
        let t = *seen.last().expect("a pass has a token") as usize;
        match &self.table {
            Some(table) => out.copy_from_slice(&table[t]),
            None if self.whole_history => {
                let h = seen
                    .iter()
                    .fold(7usize, |h, &x| (h * 31 + x as usize) % 1_000_003);
                out[h % self.script.len()] = 10.0;
            }
            None => out[self.script[t] as usize] = 10.0,
        }
    }
}

impl DecoderModel for ScriptedModel {
    fn vocab_size(&self) -> usize {
        self.script.len()
    }
    fn context_length(&self) -> usize {
        self.context
    }
    fn forward(&mut self, tokens: &[u32], plan: StepPlan) -> Result<&mut [f32]> {
        Ok(self.run(tokens, plan, 1))
    }
    fn forward_last(&mut self, tokens: &[u32], plan: StepPlan, rows: usize) -> Result<&mut [f32]> {
        assert!(
            (1..=tokens.len()).contains(&rows),
            "{rows} logit rows asked of a {}-token pass",
            tokens.len()
        );
        Ok(self.run(tokens, plan, rows))
    }
    fn can_rollback(&self) -> bool {
        true
    }
    fn reserve(&mut self, max_total_len: usize) -> Result<bool> {
        self.reserved.push(max_total_len);
        if self.reallocate_on_reserve {
            self.cached.clear();
        }
        Ok(!self.reallocate_on_reserve)
    }
    fn truncate_cache(&mut self, len: usize) -> Result<()> {
        self.cached.truncate(len);
        Ok(())
    }
}

impl BatchModel for ScriptedModel {
    fn reserve_batch(&mut self, slots: usize, positions: usize) -> Result<()> {
        assert!(
            positions <= self.context,
            "batch cache larger than the context"
        );
        assert!(
            positions >= self.slot_positions,
            "batch cache shrank under its slots"
        );
        self.slot_caches.resize(slots, Vec::new());
        self.slot_positions = positions;
        Ok(())
    }
    fn load_slot(&mut self, slot: usize, len: usize) -> Result<()> {
        assert!(
            len <= self.cached.len(),
            "copied positions that are not cached"
        );
        assert!(len <= self.slot_positions, "slot too small for its prompt");
        self.slot_caches[slot] = self.cached[..len].to_vec();
        Ok(())
    }
    fn unload_slot(&mut self, slot: usize, len: usize) -> Result<()> {
        assert!(
            len <= self.slot_caches[slot].len(),
            "unloaded positions that are not cached"
        );
        assert!(
            self.reserved.last().is_some_and(|&r| r >= len),
            "unloaded into a cache not reserved for it"
        );
        self.cached = self.slot_caches[slot][..len].to_vec();
        Ok(())
    }
    fn move_slot(&mut self, from: usize, to: usize, len: usize) -> Result<()> {
        assert!(
            len <= self.slot_caches[from].len(),
            "moved positions that are not cached"
        );
        self.slot_caches[to] = self.slot_caches[from][..len].to_vec();
        self.slot_caches[from].clear();
        Ok(())
    }
    fn forward_batch(&mut self, tokens: &[u32], past: &[usize]) -> Result<&mut [f32]> {
        let slots = tokens.len();
        assert!(
            slots >= 1 && slots <= self.slot_caches.len(),
            "{slots} rows"
        );
        assert_eq!(past.len(), slots);
        self.batch_calls.push(slots);
        let vocab = self.script.len();
        self.logits.clear();
        self.logits.resize(slots * vocab, 0.0);
        for s in 0..slots {
            let mut cache = std::mem::take(&mut self.slot_caches[s]);
            assert!(past[s] <= cache.len(), "slot {s} reads uncached positions");
            cache.truncate(past[s]);
            cache.push(tokens[s]);
            assert!(cache.len() <= self.slot_positions, "slot {s} overflows");
            let mut row = vec![0.0; vocab];
            self.fill_row(&cache, &mut row);
            self.logits[s * vocab..(s + 1) * vocab].copy_from_slice(&row);
            self.slot_caches[s] = cache;
        }
        Ok(&mut self.logits)
    }
}

/// Token t decodes to the letter ('a' + t).
pub struct Letters;

impl Decode for Letters {
    fn decode_ids(&self, ids: &[u32]) -> Result<String> {
        Ok(ids
            .iter()
            .map(|&i| (b'a' + (i % 26) as u8) as char)
            .collect())
    }
}
