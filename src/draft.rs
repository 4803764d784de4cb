//! Copy drafts: an Aligner's correction mostly copies the answer it corrects, so the answer's
//! own tokens are the draft. An alignment pointer follows where the output currently is in the
//! answer; after an edit it re-aligns on the longest recent n-gram found in the answer.
//!
//! Where a correction rewrites instead, it often writes what it wrote before: an Aligner
//! refuses harmful answers in a few fixed sentences. So a drafter's source may also hold the
//! model's recent outputs ([`DraftHistory`]) after the answer, each behind a
//! [`SOURCE_SEPARATOR`]; a rewrite that starts like one of them drafts its continuation.

use std::collections::VecDeque;

/// Proposes draft tokens from a source sequence: the tokenized answer, then any earlier
/// outputs, each after a [`SOURCE_SEPARATOR`].
#[derive(Debug, Clone)]
pub struct CopyDrafter {
    source: Vec<u32>,
    /// Where the answer ends in `source` (the first separator).
    answer_len: usize,
    /// Index in `source` of the next token to propose, when aligned.
    pointer: Option<usize>,
    draft_len: usize,
    max_draft: usize,
}

/// Separates a drafter's sources; never a token id, so no n-gram and no draft crosses it.
pub const SOURCE_SEPARATOR: u32 = u32::MAX;
/// Longest output suffix used to re-align after an edit.
const MAX_NGRAM: usize = 4;
/// Shortest suffix that counts as an alignment in the answer (single tokens match too often).
const MIN_NGRAM: usize = 2;
/// Shortest suffix that aligns into an earlier output: two tokens (". The") recur across
/// unrelated texts, and a wrong draft costs a pass's worth of tokens.
const MIN_NGRAM_HISTORY: usize = 3;

impl CopyDrafter {
    /// A drafter over `source`. The first draft is as long as allowed: an Aligner's correction
    /// mostly copies the answer, and a k-token pass costs far less than k single steps (on the
    /// default model with 2 threads, 15 ms for 16 tokens and 25 ms for 32, against 5.6 ms for
    /// one), so a long first draft saves passes; a rejection shrinks it at once.
    pub fn new(source: Vec<u32>, max_draft: usize) -> Self {
        let max_draft = max_draft.max(1);
        let answer_len = source
            .iter()
            .position(|&t| t == SOURCE_SEPARATOR)
            .unwrap_or(source.len());
        CopyDrafter {
            source,
            answer_len,
            pointer: None,
            draft_len: max_draft,
            max_draft,
        }
    }

    /// Current adaptive draft length.
    pub fn draft_len(&self) -> usize {
        self.draft_len
    }

    /// Draft continuing `output` (all tokens generated so far), at most `limit` tokens.
    pub fn propose(&mut self, output: &[u32], limit: usize) -> &[u32] {
        let n = self.draft_len.min(limit);
        if n == 0 || self.source.is_empty() {
            return &[];
        }
        let start = match self.pointer.filter(|&p| self.follows(output, p)) {
            Some(p) => Some(p),
            None => self.realign(output),
        };
        self.pointer = start;
        match start {
            Some(p) if p < self.source.len() => {
                // No further than the longest draft `take` can return, plus one token to tell
                // whether the copied text ends there.
                let window = (p + n + self.max_draft / 2 + 1).min(self.source.len());
                let rest = &self.source[p..window];
                let rest = &rest[..rest
                    .iter()
                    .position(|&t| t == SOURCE_SEPARATOR)
                    .unwrap_or(rest.len())];
                &rest[..self.take(rest.len(), n, limit)]
            }
            _ => &[],
        }
    }

    /// How many of the `rest` tokens left in the pointer's source to draft, given the
    /// adaptive length `n`. While the length is at its cap (the first draft, and again once
    /// drafts after a rejection were all accepted), a short tail (up to half the cap) joins
    /// the draft: a pass has a fixed cost of about one decode step besides its rows, so a
    /// second pass for a few last tokens costs more than verifying them now.
    fn take(&self, rest: usize, n: usize, limit: usize) -> usize {
        if self.draft_len == self.max_draft && rest > n && rest - n <= self.max_draft / 2 {
            rest.min(limit)
        } else {
            rest.min(n)
        }
    }

    /// Reports how many of the last `proposed` tokens were accepted; adapts the length and
    /// moves the pointer past what was copied.
    pub fn feedback(&mut self, proposed: usize, accepted: usize) {
        if proposed == 0 {
            return;
        }
        if let Some(p) = self.pointer.as_mut() {
            *p += accepted;
        }
        self.draft_len = if accepted == proposed {
            (self.draft_len * 2).min(self.max_draft)
        } else {
            (accepted + 1).clamp(1, self.max_draft)
        };
    }

    /// The pointer is still valid when the last output token is the source token before it.
    fn follows(&self, output: &[u32], p: usize) -> bool {
        p > 0 && output.last() == self.source.get(p - 1)
    }

    /// Finds the longest suffix of `output` (MAX_NGRAM down to MIN_NGRAM tokens) in the
    /// source, preferring the occurrence nearest after the old pointer, and points after it.
    fn realign(&self, output: &[u32]) -> Option<usize> {
        let hint = self.pointer.unwrap_or(0);
        for n in (MIN_NGRAM..=MAX_NGRAM.min(output.len())).rev() {
            let suffix = &output[output.len() - n..];
            // Prefer the nearest occurrence at or after the pointer, else the nearest before.
            let best = self
                .source
                .windows(n)
                .enumerate()
                .filter(|&(i, window)| {
                    window == suffix && (i < self.answer_len || n >= MIN_NGRAM_HISTORY)
                })
                .map(|(i, _)| i + n)
                .min_by_key(|&after| (after < hint, after.abs_diff(hint)));
            if best.is_some() {
                return best;
            }
        }
        // Too little output for an n-gram: a correction usually starts where the answer starts.
        if output.len() < MIN_NGRAM && self.source.starts_with(output) {
            return Some(output.len());
        }
        None
    }
}

/// The most recent distinct outputs of one model handle, as extra copy-draft sources (see
/// the module docs). Bounded: 16 outputs of at most 256 tokens each.
#[derive(Debug, Clone, Default)]
pub struct DraftHistory {
    outputs: VecDeque<Vec<u32>>,
}

impl DraftHistory {
    /// Outputs kept.
    const OUTPUTS: usize = 16;
    /// Tokens kept of each (their start: where a rewrite that repeats one begins).
    const TOKENS: usize = 256;

    /// Remembers `output`, most recent first; an output already held moves to the front.
    pub fn push(&mut self, output: &[u32]) {
        if output.len() <= MIN_NGRAM_HISTORY {
            return;
        }
        let output = &output[..output.len().min(Self::TOKENS)];
        self.outputs.retain(|o| o != output);
        self.outputs.push_front(output.to_vec());
        self.outputs.truncate(Self::OUTPUTS);
    }

    /// A drafter source: `answer`, then each remembered output (most recent first) after a
    /// [`SOURCE_SEPARATOR`]. A realignment prefers the occurrence nearest the answer's start.
    pub fn source(&self, answer: &[u32]) -> Vec<u32> {
        let mut source = answer.to_vec();
        for output in &self.outputs {
            source.push(SOURCE_SEPARATOR);
            source.extend_from_slice(output);
        }
        source
    }
}

/// Shortest run of tokens that counts as copied in [`copy_fraction`]: shorter common runs are
/// mostly chance (" the", ".").
pub const MIN_COPY_SPAN: usize = 3;

/// Fraction of `output` tokens lying in spans of at least [`MIN_COPY_SPAN`] tokens that also
/// occur, contiguously, in `source`: how much of a correction is copied from the answer, the
/// quantity that bounds what copy drafts can save.
pub fn copy_fraction(output: &[u32], source: &[u32]) -> f64 {
    if output.is_empty() {
        return 0.0;
    }
    let mut covered = vec![false; output.len()];
    for start in 0..output.len() {
        let longest = (0..source.len())
            .map(|j| {
                output[start..]
                    .iter()
                    .zip(&source[j..])
                    .take_while(|(a, b)| a == b)
                    .count()
            })
            .max()
            .unwrap_or(0);
        if longest >= MIN_COPY_SPAN {
            covered[start..start + longest].fill(true);
        }
    }
    covered.iter().filter(|&&c| c).count() as f64 / output.len() as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_fraction_counts_tokens_in_long_enough_shared_spans() {
        let source = [1, 2, 3, 4, 5, 6, 7, 8];
        assert_eq!(copy_fraction(&[1, 2, 3, 4], &source), 1.0);
        // "9 9" is new; "1 2" is too short to count; "5 6 7 8" is copied.
        assert_eq!(copy_fraction(&[9, 9, 1, 2, 5, 6, 7, 8], &source), 0.5);
        // Spans may come from anywhere in the source, in any order.
        assert_eq!(copy_fraction(&[6, 7, 8, 1, 2, 3], &source), 1.0);
        assert_eq!(copy_fraction(&[], &source), 0.0);
        assert_eq!(copy_fraction(&[1, 2, 3], &[]), 0.0);
    }

    #[test]
    fn starts_at_the_beginning_and_follows_accepted_copies() {
        let mut d = CopyDrafter::new(vec![10, 11, 12, 13, 14, 15, 16, 17, 18], 4);
        assert_eq!(
            d.propose(&[], 8),
            &[10, 11, 12, 13],
            "the first draft is the longest"
        );
        d.feedback(4, 4);
        assert_eq!(d.propose(&[10, 11, 12, 13, 14], 8), &[15, 16, 17, 18]);
        d.feedback(4, 1);
        assert_eq!(d.draft_len(), 2, "a rejection shrinks the draft");
        d.feedback(2, 2);
        assert_eq!(
            d.draft_len(),
            4,
            "full acceptance doubles it, up to the cap"
        );
    }

    #[test]
    fn rejection_shrinks_the_draft_and_realigns_after_an_edit() {
        let mut d = CopyDrafter::new(vec![1, 2, 3, 4, 5, 6, 7, 8, 9], 4);
        assert_eq!(d.propose(&[], 8), &[1, 2, 3, 4]);
        d.feedback(4, 1);
        assert_eq!(d.draft_len(), 2);
        // Output diverged after 1 (an inserted 42), then rejoined with "5 6".
        assert_eq!(d.propose(&[1, 42, 5, 6], 8), &[7, 8]);
    }

    #[test]
    fn first_token_matching_the_answer_start_aligns() {
        let mut d = CopyDrafter::new(vec![5, 6, 7, 8], 4);
        assert_eq!(d.propose(&[5], 2), &[6, 7]);
        let mut d = CopyDrafter::new(vec![5, 6, 7, 8], 4);
        assert!(d.propose(&[6], 2).is_empty());
    }

    #[test]
    fn unaligned_output_gets_no_draft() {
        let mut d = CopyDrafter::new(vec![1, 2, 3], 4);
        assert!(d.propose(&[9, 8, 7], 4).is_empty());
    }

    #[test]
    fn limit_and_source_end_cap_the_draft() {
        let mut d = CopyDrafter::new(vec![1, 2, 3], 16);
        assert_eq!(d.propose(&[], 2), &[1, 2]);
        d.feedback(2, 2);
        assert_eq!(d.propose(&[1, 2], 16), &[3]);
        let mut empty = CopyDrafter::new(vec![], 4);
        assert!(empty.propose(&[], 4).is_empty());
    }

    #[test]
    fn a_short_tail_joins_a_draft_while_the_length_is_at_its_cap() {
        // Cap 4: a tail of up to 2 tokens past the draft comes along.
        let source: Vec<u32> = (1..=6).collect();
        let mut d = CopyDrafter::new(source.clone(), 4);
        assert_eq!(d.propose(&[], 8), &[1, 2, 3, 4, 5, 6]);
        assert_eq!(
            d.propose(&[], 5),
            &[1, 2, 3, 4, 5],
            "the limit still caps it"
        );
        // A tail of 3 is more than half the cap: it waits for the next pass.
        let mut d = CopyDrafter::new((1..=7).collect(), 4);
        assert_eq!(d.propose(&[], 8), &[1, 2, 3, 4]);
        // The tail ends at its source's end, never past a separator into the history.
        let mut d = CopyDrafter::new(vec![1, 2, 3, 4, 5, SOURCE_SEPARATOR, 9, 9, 9], 4);
        assert_eq!(d.propose(&[], 8), &[1, 2, 3, 4, 5]);
        // After a rejection the draft is short, and so is what it proposes.
        let mut d = CopyDrafter::new(source, 4);
        d.propose(&[], 2);
        d.feedback(2, 1);
        assert_eq!(d.propose(&[1, 2], 8), &[3, 4]);
    }

    #[test]
    fn a_rewrite_that_repeats_an_earlier_output_drafts_its_continuation() {
        let mut history = DraftHistory::default();
        history.push(&[50, 51, 52, 53, 54, 55]);
        history.push(&[1, 2]); // too short to be worth keeping
        let answer = [1, 2, 3, 4];
        let mut d = CopyDrafter::new(history.source(&answer), 8);
        // The output left the answer; two tokens of the old output are not enough...
        assert!(d.propose(&[9, 50, 51], 8).is_empty());
        // ...three are, and the draft stops where that output ends.
        assert_eq!(d.propose(&[9, 50, 51, 52], 8), &[53, 54, 55]);
        // The answer still comes first, with two tokens.
        let mut d = CopyDrafter::new(history.source(&answer), 8);
        assert_eq!(d.propose(&[7, 2, 3], 8), &[4]);
    }

    #[test]
    fn the_history_is_bounded_and_keeps_one_copy_of_each_output() {
        let mut history = DraftHistory::default();
        for i in 0..DraftHistory::OUTPUTS as u32 + 5 {
            history.push(&[i, i, i, i]);
        }
        history.push(&[7, 7, 7, 7]);
        let long: Vec<u32> = (0..1000).collect();
        history.push(&long);
        let source = history.source(&[]);
        let separators = source.iter().filter(|&&t| t == SOURCE_SEPARATOR).count();
        assert_eq!(separators, DraftHistory::OUTPUTS);
        assert_eq!(
            source[1..=DraftHistory::TOKENS],
            long[..DraftHistory::TOKENS]
        );
        assert_eq!(source.windows(4).filter(|w| w == &[7, 7, 7, 7]).count(), 1);
    }

    #[test]
    fn realignment_prefers_the_occurrence_after_the_pointer() {
        // "7 8" occurs twice; after copying past the first, the second is the right one.
        let mut d = CopyDrafter::new(vec![7, 8, 1, 2, 7, 8, 3], 8);
        d.pointer = Some(4);
        assert_eq!(d.propose(&[9, 7, 8], 2), &[3]);
    }
}
