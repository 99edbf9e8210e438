//! [`State`]: the plugin's key-value state, kept by the host.

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::wit::eventfold::plugin::state as host;

/// The plugin's state: keys are strings, values are bytes (JSON through the
/// typed helpers). Writes made while a batch is handled are committed with the
/// plugin's checkpoint, or not at all.
pub struct State {
    _private: (),
}

impl State {
    pub(crate) fn new() -> Self {
        Self { _private: () }
    }

    /// The JSON value under `key`, decoded into `T`.
    pub fn get<T: DeserializeOwned>(&self, key: &str) -> crate::Result<Option<T>> {
        match host::get(key) {
            Some(bytes) => Ok(Some(serde_json::from_slice(&bytes)?)),
            None => Ok(None),
        }
    }

    /// Stores `value` as JSON under `key`.
    pub fn put<T: Serialize + ?Sized>(&mut self, key: &str, value: &T) {
        // Serialising plain data to JSON does not fail (maps with non-string
        // keys would, and are a programming error worth a trap).
        let bytes = serde_json::to_vec(value).expect("state values serialise to JSON");
        host::set(key, &bytes);
    }

    /// The raw bytes under `key`.
    pub fn get_bytes(&self, key: &str) -> Option<Vec<u8>> {
        host::get(key)
    }

    /// Stores raw bytes under `key`.
    pub fn set_bytes(&mut self, key: &str, value: &[u8]) {
        host::set(key, value);
    }

    /// Removes `key` (nothing happens if it is absent).
    pub fn delete(&mut self, key: &str) {
        host::delete(key);
    }

    /// Reads `key` (or `T::default()`), lets `f` change it, and stores it back.
    pub fn update<T, F>(&mut self, key: &str, f: F) -> crate::Result<()>
    where
        T: Serialize + DeserializeOwned + Default,
        F: FnOnce(&mut T),
    {
        let mut value = self.get(key)?.unwrap_or_default();
        f(&mut value);
        self.put(key, &value);
        Ok(())
    }

    /// Every entry whose key starts with `prefix`, in key order, fetched from
    /// the host in pages.
    pub fn scan<'a>(&'a self, prefix: &'a str) -> impl Iterator<Item = (String, Vec<u8>)> + 'a {
        let mut after: Option<String> = None;
        let mut page: std::vec::IntoIter<(String, Vec<u8>)> = Vec::new().into_iter();
        let mut done = false;
        std::iter::from_fn(move || {
            loop {
                if let Some(entry) = page.next() {
                    after = Some(entry.0.clone());
                    return Some(entry);
                }
                if done {
                    return None;
                }
                let next = host::scan(prefix, after.as_deref(), 256);
                done = next.len() < 256;
                page = next.into_iter();
            }
        })
    }
}
