//! A scripted stand-in for the ONNX engine, for unit tests of the loops and the cache
//! bookkeeping. The next token after `t` is `script[t]` (logit 10, every other logit 0). The
//! model keeps its own copy of the cached sequence and checks every plan against it, so a loop
//! that re-feeds tokens, misplaces positions or rolls back wrongly fails.

use crate::error::Result;
use crate::kv_cache::StepPlan;
use crate::model::DecoderModel;
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
        self.logits.clear();
        self.logits.resize(rows * vocab, 0.0);
        for (row, &t) in tokens[tokens.len() - rows..].iter().enumerate() {
            let out = &mut self.logits[row * vocab..(row + 1) * vocab];
            match &self.table {
                Some(table) => out.copy_from_slice(&table[t as usize]),
                None => out[self.script[t as usize] as usize] = 10.0,
            }
        }
        &mut self.logits
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
    fn forward_all(&mut self, tokens: &[u32], plan: StepPlan) -> Result<&mut [f32]> {
        Ok(self.run(tokens, plan, tokens.len()))
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
