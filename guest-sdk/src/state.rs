//! [`State`]: the plugin's key-value state, kept by the host.

use std::any::Any;
use std::collections::HashMap;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::wit::eventfold::plugin::state as host;

/// The plugin's state: keys are strings, values are bytes (JSON through the
/// typed helpers). Writes made while a batch is handled are committed with the
/// plugin's checkpoint, or not at all.
///
/// Within a batch, values are cached in the plugin: each key is read from
/// the host at most once and written back once, when the batch ends — host
/// calls, not the fold, are what a plugin pays for per event.
pub struct State {
    cache: HashMap<String, Cached>,
}

/// One key as the batch has seen it.
struct Cached {
    /// The value as bytes (`None`: absent); stale while `typed` holds a newer one.
    value: Option<Vec<u8>>,
    /// A value decoded by [`State::update`], kept decoded between events and
    /// encoded once, when the batch ends.
    typed: Option<Typed>,
    dirty: bool,
}

struct Typed {
    value: Box<dyn Any>,
    encode: fn(&dyn Any) -> Vec<u8>,
}

fn encode_as<T: Serialize + 'static>(value: &dyn Any) -> Vec<u8> {
    // `encode` is always paired with a value of type `T`.
    value
        .downcast_ref::<T>()
        .map(|v| serde_json::to_vec(v).expect("state values serialise to JSON"))
        .unwrap_or_default()
}

impl Cached {
    /// Encodes a decoded value back into bytes.
    fn settle(&mut self) {
        if let Some(typed) = self.typed.take() {
            self.value = Some((typed.encode)(&*typed.value));
        }
    }
}

impl State {
    pub(crate) fn new() -> Self {
        Self {
            cache: HashMap::new(),
        }
    }

    /// The cache entry for `key`, read from the host the first time.
    fn entry(&mut self, key: &str) -> &mut Cached {
        if !self.cache.contains_key(key) {
            let value = host::get(key);
            self.cache.insert(
                key.to_owned(),
                Cached {
                    value,
                    typed: None,
                    dirty: false,
                },
            );
        }
        self.cache
            .get_mut(key)
            .expect("the entry was inserted just above")
    }

    fn read(&mut self, key: &str) -> Option<&Vec<u8>> {
        let cached = self.entry(key);
        cached.settle();
        cached.value.as_ref()
    }

    fn write(&mut self, key: &str, value: Option<Vec<u8>>) {
        // A key seen before in the batch is updated in place, without a new String.
        match self.cache.get_mut(key) {
            Some(cached) => {
                cached.value = value;
                cached.typed = None;
                cached.dirty = true;
            }
            None => {
                let cached = Cached {
                    value,
                    typed: None,
                    dirty: true,
                };
                self.cache.insert(key.to_owned(), cached);
            }
        }
    }

    /// Hands the batch's writes to the host.
    pub(crate) fn flush(&mut self) {
        for (key, cached) in self.cache.iter_mut().filter(|(_, c)| c.dirty) {
            cached.settle();
            match &cached.value {
                Some(value) => host::set(key, value),
                None => host::delete(key),
            }
            cached.dirty = false;
        }
    }

    /// The JSON value under `key`, decoded into `T`.
    pub fn get<T: DeserializeOwned>(&mut self, key: &str) -> crate::Result<Option<T>> {
        match self.read(key) {
            Some(bytes) => Ok(Some(serde_json::from_slice(bytes)?)),
            None => Ok(None),
        }
    }

    /// Stores `value` as JSON under `key`.
    pub fn put<T: Serialize + ?Sized>(&mut self, key: &str, value: &T) {
        // Serialising plain data to JSON does not fail (maps with non-string
        // keys would, and are a programming error worth a trap).
        let bytes = serde_json::to_vec(value).expect("state values serialise to JSON");
        self.write(key, Some(bytes));
    }

    /// The raw bytes under `key`.
    pub fn get_bytes(&mut self, key: &str) -> Option<Vec<u8>> {
        self.read(key).cloned()
    }

    /// Stores raw bytes under `key`.
    pub fn set_bytes(&mut self, key: &str, value: &[u8]) {
        self.write(key, Some(value.to_vec()));
    }

    /// Removes `key` (nothing happens if it is absent).
    pub fn delete(&mut self, key: &str) {
        self.write(key, None);
    }

    /// Reads `key` (or `T::default()`), lets `f` change it, and stores it back.
    /// Within a batch the value stays decoded: updating the same key for
    /// every event costs one JSON decode and one encode per batch.
    pub fn update<T, F>(&mut self, key: &str, f: F) -> crate::Result<()>
    where
        T: Serialize + DeserializeOwned + Default + 'static,
        F: FnOnce(&mut T),
    {
        let cached = self.entry(key);
        cached.dirty = true;
        if let Some(value) = cached
            .typed
            .as_mut()
            .and_then(|t| t.value.downcast_mut::<T>())
        {
            f(value);
            return Ok(());
        }
        cached.settle();
        let mut value: T = match &cached.value {
            Some(bytes) => serde_json::from_slice(bytes)?,
            None => T::default(),
        };
        f(&mut value);
        cached.typed = Some(Typed {
            value: Box::new(value),
            encode: encode_as::<T>,
        });
        Ok(())
    }

    /// Every entry whose key starts with `prefix`, in key order, fetched from
    /// the host in pages (this batch's writes included).
    pub fn scan<'a>(&'a mut self, prefix: &'a str) -> impl Iterator<Item = (String, Vec<u8>)> + 'a {
        self.flush();
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
