//! KV-cache bookkeeping, independent of where the cache tensors live.
//!
//! The cursor knows how many positions the cache holds and how many it can hold; every forward
//! pass is planned through it, so overflow is caught before ONNX Runtime sees a bad shape and
//! the engine derives attention-mask length and positions from one place.

use std::ops::Range;

use crate::error::{Error, Result};

/// Shapes of one forward pass: `new_len` tokens appended after `past_len` cached positions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StepPlan {
    pub past_len: usize,
    pub new_len: usize,
}

impl StepPlan {
    /// Length of the attention mask (past plus new tokens).
    pub fn total_len(&self) -> usize {
        self.past_len + self.new_len
    }

    /// Position ids of the new tokens.
    pub fn positions(&self) -> Range<usize> {
        self.past_len..self.total_len()
    }
}

#[derive(Debug, Clone)]
pub struct KvCursor {
    len: usize,
    capacity: usize,
}

impl KvCursor {
    pub fn new(capacity: usize) -> Self {
        KvCursor { len: 0, capacity }
    }

    /// A cursor over a cache that already holds `len` positions (a reused prompt prefix).
    pub fn holding(capacity: usize, len: usize) -> Self {
        KvCursor {
            len: len.min(capacity),
            capacity,
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    pub fn remaining(&self) -> usize {
        self.capacity - self.len
    }

    /// Plans appending `new_len` tokens, or reports that they do not fit.
    pub fn plan(&self, new_len: usize) -> Result<StepPlan> {
        if new_len == 0 {
            return Err(Error::invalid("a forward pass needs at least one token"));
        }
        if self.len + new_len > self.capacity {
            return Err(Error::ContextOverflow {
                prompt_tokens: self.len + new_len,
                context_length: self.capacity,
            });
        }
        Ok(StepPlan {
            past_len: self.len,
            new_len,
        })
    }

    /// Records that a planned step ran.
    pub fn commit(&mut self, plan: StepPlan) {
        debug_assert_eq!(plan.past_len, self.len, "step planned on a stale cursor");
        self.len = plan.total_len();
    }

    /// Forgets positions past `len` (a rejected draft, or a new sequence with `len = 0`).
    pub fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plans_commit_and_overflow() {
        let mut c = KvCursor::new(10);
        let p = c.plan(7).unwrap();
        assert_eq!((p.past_len, p.total_len(), p.positions()), (0, 7, 0..7));
        c.commit(p);
        let p = c.plan(1).unwrap();
        assert_eq!(p.positions(), 7..8);
        c.commit(p);
        assert_eq!(c.remaining(), 2);
        match c.plan(3) {
            Err(Error::ContextOverflow {
                prompt_tokens,
                context_length,
            }) => assert_eq!((prompt_tokens, context_length), (11, 10)),
            other => panic!("expected overflow, got {other:?}"),
        }
        c.truncate(3);
        assert_eq!(c.len(), 3);
        c.truncate(0);
        assert!(c.is_empty());
        assert!(c.plan(0).is_err());
    }
}
