//! A plugin's stdout and stderr: forwarded line by line to the host's log,
//! tagged with the plugin's name, and capped so a chatty plugin cannot flood it.

use std::sync::Arc;

use parking_lot::Mutex;

use bytes::Bytes;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamError};

/// Where a plugin's output goes. Cheap to clone; clones share the budget.
#[derive(Clone)]
pub struct PluginOutput {
    inner: Arc<Mutex<Buffer>>,
}

struct Buffer {
    plugin: Arc<str>,
    stream: &'static str,
    line: Vec<u8>,
    budget: usize,
    max_line: usize,
    dropped: usize,
}

impl PluginOutput {
    /// Output of `plugin` on `stream` ("stdout" or "stderr"), keeping at most
    /// `budget` bytes until [`PluginOutput::reset`] and lines of `max_line` bytes.
    pub fn new(plugin: Arc<str>, stream: &'static str, budget: usize, max_line: usize) -> Self {
        let buffer = Buffer {
            plugin,
            stream,
            line: Vec::new(),
            budget,
            max_line,
            dropped: 0,
        };
        Self {
            inner: Arc::new(Mutex::new(buffer)),
        }
    }

    /// Flushes a partial line and starts a new budget (called after each call).
    pub fn reset(&self, budget: usize) {
        let mut b = self.inner.lock();
        b.emit_line();
        if b.dropped > 0 {
            tracing::warn!(plugin = %b.plugin, "{} bytes of {} dropped (over the cap)", b.dropped, b.stream);
        }
        b.dropped = 0;
        b.budget = budget;
    }

    fn write(&self, bytes: &[u8]) {
        let mut b = self.inner.lock();
        let keep = bytes.len().min(b.budget);
        b.budget -= keep;
        b.dropped += bytes.len() - keep;
        for &byte in &bytes[..keep] {
            if byte == b'\n' {
                b.emit_line();
            } else if b.line.len() < b.max_line {
                b.line.push(byte);
            }
        }
    }
}

impl Buffer {
    fn emit_line(&mut self) {
        if !self.line.is_empty() {
            let text = String::from_utf8_lossy(&self.line);
            tracing::info!(plugin = %self.plugin, stream = self.stream, "{text}");
            self.line.clear();
        }
    }
}

impl IsTerminal for PluginOutput {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for PluginOutput {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

#[wasmtime_wasi::async_trait]
impl OutputStream for PluginOutput {
    fn write(&mut self, bytes: Bytes) -> Result<(), StreamError> {
        PluginOutput::write(self, &bytes);
        Ok(())
    }

    fn flush(&mut self) -> Result<(), StreamError> {
        Ok(())
    }

    fn check_write(&mut self) -> Result<usize, StreamError> {
        // Always ready: what is over the cap is dropped, never an error that
        // would make the guest's print panic.
        Ok(1 << 20)
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for PluginOutput {
    async fn ready(&mut self) {}
}

impl tokio::io::AsyncWrite for PluginOutput {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        PluginOutput::write(&self, buf);
        std::task::Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}
