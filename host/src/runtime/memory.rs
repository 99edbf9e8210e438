//! [`MemoryLimiter`]: a plugin instance's memory cap. A refused grow is
//! answered to the guest (`memory.grow` returns -1), so a garbage-collected
//! runtime (JavaScript, Python) can collect and go on; if the guest cannot
//! cope, it traps, and the refusal tells the runner why.

use wasmtime::ResourceLimiter;

/// Most table elements an instance may have (function tables of large
/// interpreters run to tens of thousands).
const MAX_TABLE_ELEMENTS: usize = 1 << 20;

/// Caps linear memory and remembers how close the instance came to the cap.
#[derive(Debug, Clone, Copy)]
pub struct MemoryLimiter {
    limit: usize,
    /// The most memory the instance has held.
    pub peak: usize,
    /// Whether a grow was refused since [`MemoryLimiter::reset`].
    pub refused: bool,
}

impl MemoryLimiter {
    /// A cap of `limit` bytes.
    pub fn new(limit: usize) -> Self {
        Self {
            limit,
            peak: 0,
            refused: false,
        }
    }

    /// Forgets earlier refusals (at the start of a call).
    pub fn reset(&mut self) {
        self.refused = false;
    }
}

impl ResourceLimiter for MemoryLimiter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.limit {
            self.refused = true;
            return Ok(false);
        }
        self.peak = self.peak.max(desired);
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= MAX_TABLE_ELEMENTS)
    }
}
