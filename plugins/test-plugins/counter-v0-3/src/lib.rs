//! `counter`, built directly against WIT 0.3 (no SDK; the SDK is on 0.4):
//! `count` → how many events, `last` → the last position seen, from the
//! packed encoding. It keeps a plugin of the 0.3 contract in the tests.

wit_bindgen::generate!({ path: "../../../wit/v0.3", world: "projection" });

use eventfold::plugin::state;
use eventfold::plugin::types::{EventEncoding, PluginKind, Subscription};

struct Counter;

fn number(key: &str) -> u64 {
    state::get(key)
        .and_then(|v| String::from_utf8(v).ok()?.parse().ok())
        .unwrap_or(0)
}

/// The number of events in a packed batch and the position of its last.
fn count_and_last(bytes: &[u8]) -> Option<(u64, u64)> {
    let u32_at = |at: usize| Some(u32::from_le_bytes(bytes.get(at..at + 4)?.try_into().ok()?));
    let u64_at = |at: usize| Some(u64::from_le_bytes(bytes.get(at..at + 8)?.try_into().ok()?));
    let count = u32_at(0)?;
    let (mut at, mut last) = (4, 0);
    for _ in 0..count {
        last = u64_at(at)?;
        let fields: u32 = (0..5).map(|i| u32_at(at + 24 + 4 * i)).sum::<Option<u32>>()?;
        at += 44 + fields as usize;
    }
    Some((u64::from(count), last))
}

impl Guest for Counter {
    fn describe() -> PluginInfo {
        PluginInfo {
            kind: PluginKind::Projection,
            subscription: Subscription { categories: vec![], event_types: vec![] },
            version: "0.3.0".into(),
            encoding: EventEncoding::Packed,
        }
    }

    fn handle(events: Events) -> Result<(), HandleError> {
        let bad = |message: &str| HandleError { index: 0, message: message.into() };
        let Events::Packed(bytes) = events else {
            return Err(bad("expected a packed batch"));
        };
        let (count, last) = count_and_last(&bytes).ok_or_else(|| bad("a truncated batch"))?;
        if count > 0 {
            state::set("count", (number("count") + count).to_string().as_bytes());
            state::set("last", last.to_string().as_bytes());
        }
        Ok(())
    }

    fn query(_request: Vec<u8>) -> Result<Vec<u8>, String> {
        Ok(number("count").to_string().into_bytes())
    }
}

export!(Counter);
