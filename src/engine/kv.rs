//! The shared KV buffers: how many positions they hold, how they grow, and their binding.
//!
//! A sequence longer than the buffers gets new ones. On the CPU the cached positions move
//! into them (a memcpy per layer and head: 11.8 MB at 256 positions of SmolLM2-135M), so
//! growing keeps a cached prompt prefix, and the buffers can grow in small steps: by at
//! least a quarter, to what the sequence needs, rounded up to 64 positions. Doubling, as
//! before, held up to twice the cache a sequence needed (512 positions for a 266-position
//! correction: 23.6 MB instead of 12.3) because each growth dropped the prefix.
//!
//! Host buffers come from ONNX Runtime's plain CPU allocator, not the session's arena: an
//! arena keeps what is freed in it, so outgrown buffers would stay resident for the process's
//! life. A device cache (CUDA) is dropped before the new one is allocated, and its positions
//! are lost (the caller runs the whole prompt again).

use ort::memory::Allocator;
use ort::session::IoBinding;
use ort::value::DynTensor;

use super::batch::copy_kv;
use super::io::InputRole;
use super::{KvStorage, OnnxDecoder};
use crate::error::{Error, Result};

/// The smallest shared KV buffer allocated, in positions (about 12 MB for SmolLM2-135M).
const MIN_KV_POSITIONS: usize = 256;

/// Buffers grow in whole steps of this many positions.
const KV_STEP_POSITIONS: usize = 64;

/// The capacity to allocate when `needed` positions do not fit in `capacity`.
fn grown_capacity(capacity: usize, needed: usize, context_length: usize) -> usize {
    let at_least = if capacity == 0 {
        MIN_KV_POSITIONS
    } else {
        capacity + capacity / 4
    };
    needed
        .max(at_least)
        .div_ceil(KV_STEP_POSITIONS)
        .saturating_mul(KV_STEP_POSITIONS)
        .min(context_length)
        .max(needed)
}

impl OnnxDecoder {
    /// One `[batch, kv_heads, len, head]` tensor per past slot.
    pub(super) fn kv_tensors(&self, batch: usize, len: usize) -> Result<Vec<DynTensor>> {
        let host = Allocator::default();
        let allocator = self.kv_allocator.as_ref().unwrap_or(&host);
        (0..self.present_names.len())
            .map(|_| {
                DynTensor::new(
                    allocator,
                    self.kv_dtype,
                    [batch, self.kv_heads, len, self.head_size],
                )
                .map_err(Error::ort_run)
            })
            .collect()
    }

    /// Shared mode: (re)allocates the buffers when a sequence may outgrow them and binds each
    /// as both the past input and the present output of its layer. Returns false when the
    /// cached positions are gone (the first allocation, or a device cache that grew).
    pub(super) fn ensure_shared_capacity(&mut self, needed: usize) -> Result<bool> {
        let KvStorage::Shared { capacity, .. } = &self.kv else {
            return Ok(true);
        };
        let old_capacity = *capacity;
        if old_capacity >= needed {
            return Ok(true);
        }
        let new_capacity = grown_capacity(old_capacity, needed, self.context_length);
        // The binding goes first (it refers to the old buffers); a device cache goes whole,
        // so that the old and the new one are never both on the device.
        let keep = old_capacity > 0 && self.kv_allocator.is_none();
        let old = match std::mem::replace(&mut self.kv, KvStorage::unbound()) {
            KvStorage::Shared { _buffers, .. } if keep => _buffers,
            _ => Vec::new(),
        };
        let mut buffers = self.kv_tensors(1, new_capacity)?;
        if keep {
            let d = self.head_size;
            for (src, dst) in old.iter().zip(buffers.iter_mut()) {
                let runs = (0..self.kv_heads).map(|h| (h * old_capacity * d, h * new_capacity * d));
                copy_kv(self.kv_dtype, src, dst, runs, old_capacity * d)?;
            }
        }
        drop(old);
        let binding = self.bind_kv(&mut buffers)?;
        self.kv = KvStorage::Shared {
            _buffers: buffers,
            capacity: new_capacity,
            binding: Some(Box::new(binding)),
        };
        Ok(keep)
    }

    /// A binding with each layer's buffer as both its past input and its present output, so
    /// GroupQueryAttention writes new positions in place.
    fn bind_kv(&self, buffers: &mut [DynTensor]) -> Result<IoBinding> {
        let mut binding = self.session.create_binding().map_err(Error::ort_run)?;
        for (slot, buffer) in buffers.iter_mut().enumerate() {
            binding
                .bind_input(self.past_input_name(slot), &*buffer)
                .map_err(Error::ort_run)?;
            binding
                .bind_output(self.present_names[slot].as_str(), &mut *buffer)
                .map_err(Error::ort_run)?;
        }
        Ok(binding)
    }

    pub(super) fn past_input_name(&self, slot: usize) -> &str {
        let index = self
            .roles
            .iter()
            .position(|r| *r == InputRole::Past(slot))
            .unwrap_or(0);
        &self.input_names[index]
    }
}

#[cfg(test)]
mod tests {
    use super::grown_capacity;

    #[test]
    fn buffers_start_at_256_positions_and_grow_by_a_quarter_in_steps_of_64() {
        assert_eq!(grown_capacity(0, 10, 8192), 256);
        assert_eq!(grown_capacity(0, 300, 8192), 320);
        // The bench's longest correction, 266 positions, after a 186-position sequence.
        assert_eq!(grown_capacity(256, 266, 8192), 320);
        assert_eq!(grown_capacity(320, 330, 8192), 448);
        assert_eq!(grown_capacity(320, 1000, 8192), 1024);
    }

    #[test]
    fn capacity_stays_within_the_context_unless_a_sequence_needs_more() {
        assert_eq!(grown_capacity(0, 10, 128), 128);
        assert_eq!(grown_capacity(1000, 1100, 1100), 1100);
        // Past the context the caller reports the overflow; the buffer fits what was asked.
        assert_eq!(grown_capacity(100, 200, 150), 200);
    }
}
